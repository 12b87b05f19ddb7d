"""Shared fixtures: the reference goldens and tiny checkpoints in the released layout."""

from __future__ import annotations

import os
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# Tests are small; one thread each keeps them deterministic and friendly to 2-core CI machines.
TEST_THREADS = int(os.environ.get("ECHOFLOW_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A command run in-process may set torch's thread count (`--threads`); the next test gets the
    suite's own count back, so results never depend on the order the tests ran in."""
    yield
    if torch.get_num_threads() != TEST_THREADS:
        torch.set_num_threads(TEST_THREADS)


def call_main(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run a command-line entry point in-process, as the shell would: -> (exit status, stdout, stderr).
    `raise SystemExit("message")` counts as status 1 with the message on stderr, as Python prints it."""
    capsys.readouterr()  # drop what earlier steps of the test printed
    try:
        code = main(argv)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            code = 1
        else:
            code = exc.code or 0
    out, err = capsys.readouterr()
    return int(code or 0), out, err


@pytest.fixture
def run_cli(capsys) -> Callable[..., tuple[int, str, str]]:
    """run_cli(argv) runs `echoflow ARGV` in-process; run_cli(argv, main=headless.main) another entry."""
    from echoflow_models.cli import main as echoflow_main

    def run(argv: list[str], main: Callable[[list[str]], int] = echoflow_main) -> tuple[int, str, str]:
        return call_main(main, [str(a) for a in argv], capsys)

    return run

FIXTURES = Path(__file__).parent / "fixtures" / "echoflow-reference"
# The pack-level packages (headless, bench, research) are imported from the repository root, however pytest
# was started; the installed library is only echoflow_models.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def reference_weight(key: str, like: torch.Tensor) -> torch.Tensor:
    """The fixtures' documented weight rule (README of echoflow-reference)."""
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if key.endswith("num_batches_tracked"):
        return like.clone()
    if key.endswith("running_var"):
        return torch.rand(like.shape, generator=gen) + 0.5
    return torch.randn(like.shape, generator=gen) * 0.05


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def golden() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(FIXTURES / "golden.safetensors"))


@pytest.fixture(scope="session")
def reid_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """reid/tiny with backbone.safetensors re-created by the weight rule (the fixture ships only config.yaml)."""
    from safetensors.torch import save_file

    from echoflow_models.checkpoint import load_model  # noqa: F401  (import check)
    from echoflow_models.reid import ReIDConfig, ReIDResNet18

    folder = tmp_path_factory.mktemp("reid") / "tiny"
    folder.mkdir()
    (folder / "config.yaml").write_text((FIXTURES / "reid" / "tiny" / "config.yaml").read_text())
    model = ReIDResNet18(ReIDConfig(in_channels=4, out_channels=128))
    state = {k: reference_weight(k, v) for k, v in model.state_dict().items()}
    save_file(state, str(folder / "backbone.safetensors"))
    return folder


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory, reid_tiny_dir: Path) -> Path:
    """A weights root in the released layout built from the tiny reference checkpoints."""
    import json
    import shutil

    root = tmp_path_factory.mktemp("weights")
    for kind in ("vae", "lifm", "lvfm"):
        shutil.copytree(FIXTURES / kind / "tiny", root / kind / "tiny")
    shutil.copytree(reid_tiny_dir, root / "reid" / "tiny")
    (root / "assets").mkdir()
    shutil.copy(FIXTURES / "assets" / "scaling.pt", root / "assets" / "scaling.pt")
    shutil.copy(FIXTURES / "assets" / "anatomies_tiny.pt", root / "assets" / "anatomies_tiny.pt")
    gates = {v: {"reid": "tiny", "banks": ["anatomies_tiny.pt"], "latent_shape": [4, 28, 28]}
             for v in ("A4C", "PSAX", "PLAX")}
    (root / "gates.json").write_text(json.dumps(gates))
    return root


# ------------------------------------------------------------------------------- the node pack, no ComfyUI
@pytest.fixture(scope="module")
def pack():
    """The pack imported under its private package name, as the headless runner loads it."""
    import headless

    return headless.load_pack(ROOT)


@pytest.fixture(scope="module")
def M(pack):
    return pack.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def bridge(pack):
    import headless

    return sys.modules[headless.PACK_NAME + ".nodes.bridge"]


@pytest.fixture
def gen(tiny_root, run_cli, monkeypatch):
    """gen(out, *args, weights=..., env=...) runs `generate-dataset` in-process with 1-step sampling;
    env sets torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK) for that call only."""

    def run(out, *extra, weights=tiny_root, env=None):
        with monkeypatch.context() as m:
            for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
                m.delenv(k, raising=False)
            for k, v in (env or {}).items():
                m.setenv(k, v)
            return run_cli(["generate-dataset", "--weights", weights, "--out", out, "--image-steps", "1",
                            "--video-steps", "1", "--batch-size", "2", "--threads", "1", "--quiet", *extra])

    return run
