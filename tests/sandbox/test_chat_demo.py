"""``make run`` on a machine without ``.venv-llm``: the demo prepares the chat model itself.

The real demo node runs with its llm venv pointed at a path that does not exist yet. In the
background it runs the real ``examples/llm/build.sh``, which builds the venv from the wheel cache
(CI fills it with ``make llm-env`` first; this test never compiles llama.cpp), shows the stages,
starts llama.cpp's server, registers ``demo-vendor/smollm2-chat`` and says it is callable; a
real chat call through the broker then answers. The sandboxed ``smollm2-chat`` package, the other
user of the llama-cpp-python wheel, is prepared only once that build has settled. Stopping the
demo stops the llama.cpp server.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from broker.demo.llm_env import llama_wheels, wheel_cache
from broker.demo.sandboxed import MODELS_DIR, PACKAGES
from broker.demo.setup import DEMO_VENDOR, EXAMPLES
from broker.packages.digest import dir_name
from broker.packages.env_digest import manifest_path
from broker.packages.environment import MARKER
from broker.packages.store import PackageStore
from broker.registry.store import RegistryStore
from broker.runtimes.sandbox.launcher import SandboxLauncher
from tests.conftest import skip_or_fail
from tests.integration.demo_harness import Said, running_demo, wait_gone

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

REPO = Path(__file__).parents[2]
MLSERVER_VENV = REPO / ".venv-mlserver"
ENVS_CACHE = REPO / ".cache" / "sandbox-envs"  # where tests/sandbox/test_smollm2.py prepares it
SANDBOXED_CHAT = next(package for package in PACKAGES if package.llama_wheel)
CARD = "4111 1111 1111 1111"


@pytest.fixture
def wheels() -> Path:
    """The wheel cache, holding the llama-cpp-python wheel (else this test would compile it)."""
    found = llama_wheels()
    if found is None or not list(found.glob("llama_cpp_python-*.cmake-args")):
        skip_or_fail(f"no llama-cpp-python wheel in {wheel_cache()}: run make llm-env")
    assert found is not None
    return found


def reuse_prepared_sandbox_env(data_dir: Path) -> None:
    """Link the sandboxed package's environment if an earlier test prepared it (saves ~1 min).

    Its digest manifest is linked too: an environment without one counts as unrecorded, and
    the demo would prepare it again over the link.
    """
    digest = PackageStore(data_dir / "probe").add(MODELS_DIR / SANDBOXED_CHAT.folder).digest
    cached = ENVS_CACHE / dir_name(digest)
    if (cached / MARKER).exists() and manifest_path(cached).exists():
        linked = data_dir / "envs" / dir_name(digest)
        linked.parent.mkdir(parents=True)
        linked.symlink_to(cached, target_is_directory=True)
        manifest_path(linked).symlink_to(manifest_path(cached))


@pytest.mark.timeout(900)
def test_the_demo_builds_the_llm_env_then_serves_the_chat_model(
    tmp_path: Path,
    wheels: Path,
    launcher: SandboxLauncher,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not (MLSERVER_VENV / ".installed-stamp").exists():
        skip_or_fail(f"no MLServer environment at {MLSERVER_VENV}: run make mlserver-env")
    llm_venv = tmp_path / "venv-llm"
    reuse_prepared_sandbox_env(tmp_path / "var")
    said = Said(capsys)
    demo_run = running_demo(tmp_path, MLSERVER_VENV, llm_venv=llm_venv, sandboxed=(SANDBOXED_CHAT,))
    with demo_run as (demo, broker):
        said.wait_for(f"chat model: preparing {llm_venv} in the background", timeout=30)
        assert demo.chat.join(timeout=600), "the chat model was not ready in 10 minutes"
        assert demo.chat.error == ""
        assert demo.chat.model_ref == "demo-vendor/smollm2-chat@1.0.0"
        said.wait_for(f"model {demo.chat.model_ref} is served by llama.cpp", timeout=5)
        lines = said.lines()
        chat_lines = [line for line in lines if line.startswith("[demo] chat model: ")]
        assert any(f"reusing {wheels}" in line for line in chat_lines)
        assert any(f"creating {llm_venv}" in line for line in chat_lines)
        assert any(
            "installing llama-cpp-python and the SmolLM2 model" in line for line in chat_lines
        )
        assert len(lines) < 60, "the progress display floods the terminal"
        assert (llm_venv / ".installed-stamp").exists()
        assert f"llm-env: reusing {wheels}" in demo.chat.log_path.read_text()

        payload = orjson.loads((EXAMPLES / "chat-call.json").read_bytes())
        buyer = broker.client("acme-bank", "buyer")
        reply = buyer.invoke(
            demo.chat.model_ref, payload, labels={"/messages/1/content": ["pii.name"]}, timeout=120
        )
        text = reply.answer["choices"][0]["message"]["content"]
        assert text
        assert CARD not in text

        # The sandboxed package waited for the build that made its wheel, then was prepared.
        assert demo.sandboxed is not None
        demo.sandboxed.join(timeout=600)
        ready = said.wait_for(f"{SANDBOXED_CHAT.name}@1.0.0 is ready", timeout=5)
        lines = said.lines()
        built = next(i for i, line in enumerate(lines) if "chat model: model at" in line)
        assert built < lines.index(ready)
        RegistryStore(demo.engine).get(DEMO_VENDOR, SANDBOXED_CHAT.name, "1.0.0")
        server = demo.chat.server
        assert server is not None
    assert server.process.poll() is not None  # stopping the demo stopped llama.cpp
    assert wait_gone(server.process.pid)
