"""Parity references: faithful re-implementations of official model code.

Each module here reproduces an official implementation's module structure, state-dict keys and
forward numerics operation for operation, so that our export-friendly definitions can be checked
against it. They are not meant to be exported themselves.
"""
