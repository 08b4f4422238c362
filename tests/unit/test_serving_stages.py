"""The serving benchmark's per-request breakdown: Server-Timing parsing, stage medians, CPU."""

from __future__ import annotations

import os
import time

from bench import serving_stages


def test_server_timing_header_is_parsed_into_ms_by_stage():
    header = "upload;dur=0.4, decode;dur=3.6,wait;dur=0.0, total;desc=app;dur=21.25, cache"
    assert serving_stages.parse_server_timing(header) == {
        "upload": 0.4,
        "decode": 3.6,
        "wait": 0.0,
        "total": 21.25,
    }
    assert serving_stages.parse_server_timing("") == {}
    assert serving_stages.parse_server_timing("decode;dur=oops") == {}


def test_stage_medians_keep_the_server_order_and_skip_missing_stages():
    timings = [
        {"decode": 3.0, "inference": 10.0, "total": 15.0},
        {"decode": 5.0, "inference": 12.0, "total": 19.0},
        {"decode": 4.0, "wait": 6.0, "inference": 11.0, "total": 23.0},
    ]
    medians = serving_stages.stage_medians(timings)
    assert list(medians) == ["decode", "inference", "total", "wait"]
    assert medians == {"decode": 4.0, "inference": 11.0, "total": 19.0, "wait": 6.0}
    assert serving_stages.stage_medians([]) == {}


def test_cpu_seconds_counts_what_a_process_used_and_ignores_ended_ones():
    before = serving_stages.cpu_seconds([os.getpid()])
    end = time.process_time() + 0.3
    while time.process_time() < end:  # burn 0.3 s of CPU in this process
        pass
    used = serving_stages.cpu_seconds([os.getpid(), 2**22 + 1])  # no such PID (pid_max 2**22)
    assert used - before >= 0.25  # clock ticks are 10 ms


def test_the_stage_table_puts_each_rows_stages_beside_its_client_p50_and_cpu():
    row = {
        "model": "yolov3-tiny",
        "layout": "2 workers x 1 thread",
        "stages": {"decode": 3.62, "inference": 13.1, "total": 21.0},
        "client_p50": 52.4,
        "server_cpu_ms": 24.9,
        "client_cpu_ms": 1.2,
        "restarts": 1,
    }
    text = serving_stages.stage_table([row, {**row, "stages": {"decode": 4.0}}])
    lines = text.splitlines()
    assert lines[2] == (
        "| model | layout | decode | inference | total | client p50 | server CPU | client CPU "
        "| worker restarts |"
    )
    assert (
        lines[4]
        == "| yolov3-tiny | 2 workers x 1 thread | 3.6 | 13.1 | 21.0 | 52.4 | 24.9 | 1.2 | 1 |"
    )
    assert (
        lines[5] == "| yolov3-tiny | 2 workers x 1 thread | 4.0 | – | – | 52.4 | 24.9 | 1.2 | 1 |"
    )
