"""deploytool.verify.benchmark's timing helpers."""

import time

from deploytool.verify.benchmark import alternating_medians, median_seconds


def test_median_seconds_warms_up_then_times_each_call():
    calls = []
    median, fastest = median_seconds(lambda: calls.append(time.sleep(0.001)), 3, warmup=2)
    assert len(calls) == 5 and 0.001 <= fastest <= median


def test_alternating_medians_time_every_call_once_a_round_in_turn():
    order = []
    sleeps = {"slow": 0.004, "fast": 0.001}

    def call(name):
        order.append(name)
        time.sleep(sleeps[name])

    medians = alternating_medians({name: lambda name=name: call(name) for name in sleeps}, runs=3)
    assert order == ["slow", "fast"] * 3
    assert medians["slow"] >= 0.004 and medians["fast"] >= 0.001  # a sleep lasts at least that long
