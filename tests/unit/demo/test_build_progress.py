"""What the demo shows of a llama.cpp build: stages once, progress in steps, heartbeats when quiet.

The lines fed here have the shapes ``examples/llm/build.sh`` and ``pip -v`` print (ninja's
``[n/N]`` lines come indented under pip's output); time is passed in, nothing sleeps.
"""

from __future__ import annotations

from broker.demo.build_progress import BuildProgress, elapsed_text

NINJA = (
    "      [{n}/{total}] /usr/bin/cc -DGGML_BUILD -O3 -c "
    "/tmp/pip-install-x/llama-cpp-python/vendor/llama.cpp/ggml/src/ggml.c"
)


def shown(progress: BuildProgress, lines: list[str], now: float = 0.0) -> list[str]:
    return [s for line in lines if (s := progress.feed(line, now)) is not None]


def test_a_full_compile_shows_a_handful_of_lines_not_thousands() -> None:
    progress = BuildProgress(started=0.0)
    total = 1000
    lines = ["      *** Building project with Ninja..."]
    lines += [NINJA.format(n=n, total=total) for n in range(1, total + 1)]
    out = shown(progress, lines, now=450.0)
    assert out[0].startswith("compiling llama.cpp (usually about 15 minutes")
    percents = [line for line in out if "%" in line]
    assert len(percents) == 10
    assert percents[0] == "compiling llama.cpp: 10% (step 100/1000), 7:30 elapsed"
    assert percents[-1].startswith("compiling llama.cpp: 100% (step 1000/1000)")


def test_script_stage_lines_are_shown_and_become_the_stage() -> None:
    progress = BuildProgress(started=0.0)
    out = shown(
        progress,
        [
            "llm-env: reusing /cache/llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl",
            "Looking in indexes: https://pypi.org/simple",  # pip's chatter: log only
            "llm-env: installing llama-cpp-python and the SmolLM2 model into /tmp/v",
        ],
    )
    assert out == [
        "reusing /cache/llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl",
        "installing llama-cpp-python and the SmolLM2 model into /tmp/v",
    ]
    assert progress.stage == "installing llama-cpp-python and the SmolLM2 model into /tmp/v"


def test_each_build_stage_is_announced_once() -> None:
    progress = BuildProgress(started=0.0)
    out = shown(
        progress,
        [
            "  Running command pip subprocess to install build dependencies",
            "  Installing build dependencies ... done",
            "  *** Configuring CMake...",
            "  *** Configuring CMake...",
        ],
        now=65.0,
    )
    assert out == [
        "installing the build tools, 1:05 elapsed",
        "configuring llama.cpp (cmake), 1:05 elapsed",
    ]


def test_a_quiet_build_gets_a_heartbeat_per_interval_and_no_more() -> None:
    progress = BuildProgress(started=100.0, heartbeat_seconds=60.0)
    assert progress.feed("      *** Building project with Ninja...", 100.0) is not None
    assert progress.tick(159.0) is None
    beat = progress.tick(160.0)
    assert beat == (
        "compiling llama.cpp: still running, 1:00 elapsed"
        " (usually about 15 minutes on 2 cores, the first time only)"
    )
    assert progress.tick(200.0) is None  # the heartbeat itself counts as shown
    assert progress.tick(220.0) is not None


def test_make_percentages_are_understood_too() -> None:
    progress = BuildProgress(started=0.0)
    out = shown(progress, [f"[ {p:2d}%] Building C object ggml.c.o" for p in range(0, 101, 5)])
    assert out[0] == "compiling llama.cpp: 10%, 0:00 elapsed"
    assert len(out) == 10


def test_the_failure_reason_is_the_last_error_line_cut_short() -> None:
    progress = BuildProgress(started=0.0)
    shown(
        progress,
        [
            "  CMake Error at CMakeLists.txt:3 (project): No CMAKE_C_COMPILER could be found.",
            NINJA.format(n=1, total=2).replace("ggml.c", "error.c"),  # a command, not an error
            "  " + "x" * 500,
            "",
        ],
    )
    assert progress.last_error.startswith("CMake Error at CMakeLists.txt:3")
    assert len(progress.last_line) == 200


def test_elapsed_reads_like_a_stopwatch() -> None:
    assert elapsed_text(0) == "0:00"
    assert elapsed_text(450.9) == "7:30"
    assert elapsed_text(3725) == "62:05"
