"""What judges an export: parity against the original, results files, the HTML report, evaluation, bench.

Imports deploytool.build and deploytool.runtime, never serving or cli.
"""
