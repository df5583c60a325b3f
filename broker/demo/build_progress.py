"""Turn the output of ``examples/llm/build.sh`` into a few lines a person can follow.

A first build of llama-cpp-python prints thousands of lines (every compiler command) over about
15 minutes on two cores; the demo keeps all of them in a log file and shows only:

- the script's own stage lines (``llm-env: ...``) and the build's main stages (configuring,
  compiling, packing the wheel), each once;
- the compiler's progress, parsed from ninja's ``[n/N]`` (or make's ``[ n%]``) lines, at most
  once per ``PERCENT_STEP`` percent;
- a heartbeat when nothing was shown for ``HEARTBEAT_SECONDS``, so a quiet step (pip installing
  into the venv, the linker) does not look like a hang.

The class is pure: time is passed in, so tests feed it lines and clocks without sleeping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

HEARTBEAT_SECONDS = 60.0
PERCENT_STEP = 10
MAX_LINE_CHARS = 200  # an error line quoted in the failure message, cut to this length

_NINJA_STEP = re.compile(r"^\s*\[(\d+)/(\d+)\]\s")
_MAKE_PERCENT = re.compile(r"^\s*\[\s*(\d+)%\]\s")
_SCRIPT_LINE = re.compile(r"^llm-env: (.+)$")
_ERROR_LINE = re.compile(r"\berror\b", re.IGNORECASE)
_COMPILING = "compiling llama.cpp"
_STAGES = (
    (re.compile(r"^\s*Downloading llama_cpp_python"), "downloading the llama-cpp-python source"),
    (re.compile(r"install(ing)? build dependencies", re.IGNORECASE), "installing the build tools"),
    (re.compile(r"^\s*\*\*\* Configuring CMake"), "configuring llama.cpp (cmake)"),
    (re.compile(r"^\s*\*\*\* Building project"), _COMPILING),
    (re.compile(r"^\s*\*\*\* Making wheel"), "packing the llama-cpp-python wheel"),
)
_NOTES = {_COMPILING: " (usually about 15 minutes on 2 cores, the first time only)"}


def elapsed_text(seconds: float) -> str:
    """``m:ss``, as people read a stopwatch."""
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    return f"{minutes}:{secs:02d}"


@dataclass
class BuildProgress:
    """What to show of a build's output; ``feed`` each line, ``tick`` when no line came."""

    started: float
    heartbeat_seconds: float = HEARTBEAT_SECONDS
    stage: str = "preparing the llama.cpp environment"
    last_error: str = ""  # the last output line that mentions an error, for the failure message
    last_line: str = ""
    _last_shown: float = 0.0
    _seen: set[str] = field(default_factory=set)
    _total: int = 0
    _next_percent: int = PERCENT_STEP

    def __post_init__(self) -> None:
        self._last_shown = self.started

    def feed(self, line: str, now: float) -> str | None:
        """The line to show for this output line, or None to keep it in the log only."""
        line = line.rstrip()
        if line.strip():
            self.last_line = line.strip()[:MAX_LINE_CHARS]
        if _ERROR_LINE.search(line) and not _NINJA_STEP.match(line):  # not a compiler command
            self.last_error = line.strip()[:MAX_LINE_CHARS]
        shown = self._classify(line, now)
        if shown is not None:
            self._last_shown = now
        return shown

    def tick(self, now: float) -> str | None:
        """A heartbeat if nothing was shown for ``heartbeat_seconds``, else None."""
        if now - self._last_shown < self.heartbeat_seconds:
            return None
        self._last_shown = now
        note = _NOTES.get(self.stage, "")
        return f"{self.stage}: still running, {elapsed_text(now - self.started)} elapsed{note}"

    def _classify(self, line: str, now: float) -> str | None:
        script = _SCRIPT_LINE.match(line)
        if script:
            self.stage = script.group(1)
            return self.stage
        for pattern, stage in _STAGES:
            if pattern.search(line):
                return self._enter(stage, now)
        step = _NINJA_STEP.match(line)
        if step:
            done, total = int(step.group(1)), int(step.group(2))
            return self._percent(done * 100 // max(total, 1), total, f" (step {done}/{total})", now)
        percent = _MAKE_PERCENT.match(line)
        if percent:
            return self._percent(int(percent.group(1)), 100, "", now)
        return None

    def _enter(self, stage: str, now: float) -> str | None:
        self.stage = stage
        if stage in self._seen:
            return None
        self._seen.add(stage)
        return f"{stage}{_NOTES.get(stage, '')}, {elapsed_text(now - self.started)} elapsed"

    def _percent(self, percent: int, total: int, steps: str, now: float) -> str | None:
        if total != self._total:  # a new build with its own count of steps
            self._total, self._next_percent = total, PERCENT_STEP
        self.stage = _COMPILING
        if percent < self._next_percent:
            return None
        self._next_percent = (percent // PERCENT_STEP + 1) * PERCENT_STEP
        return f"{_COMPILING}: {percent}%{steps}, {elapsed_text(now - self.started)} elapsed"
