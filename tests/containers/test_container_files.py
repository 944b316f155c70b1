"""The container recipes: lint, structure, and agreement between Docker and Apptainer.

Building and running the image is docker/build-local.sh (run by .ci/run when a Docker
daemon can start); these tests check the files themselves on any machine.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else (shutil.which(name) or name)


def _env(text_lines) -> dict:
    return dict(line.split("=", 1) for line in text_lines)


def _docker_env() -> dict:
    """ENV of the runtime stage (KEY=VALUE continued over backslash lines)."""
    runtime = DOCKERFILE.split(" AS runtime", 1)[1]
    block = re.search(r"^ENV (.+?)(?=^\S)", runtime, re.M | re.S).group(1)
    pairs = re.findall(r'(\w+)=("[^"]*"|\S+)', block)
    return {k: v.strip('"') for k, v in pairs}


def test_hadolint_passes():
    out = subprocess.run([_tool("hadolint"), "--no-color", "Dockerfile"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_is_multistage_cpu_pinned_nonroot_with_labels():
    froms = re.findall(r"^FROM (\S+) AS (\w+)", DOCKERFILE, re.M)
    assert [stage for _, stage in froms] == ["build", "runtime"]
    assert all(base == "${BASE_IMAGE}" for base, _ in froms)
    # torch pinned to the version the README installs, CPU by default, checked in the build
    readme_pin = re.search(r"pip install torch==([\d.]+)", (ROOT / "README.md").read_text())[1]
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(readme_pin)}$", DOCKERFILE, re.M)
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", DOCKERFILE, re.M)
    assert "torch.version.cuda" in DOCKERFILE
    user = re.findall(r"^USER (\S+)", DOCKERFILE, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert re.search(r'^ENTRYPOINT \["phys-bids"\]$', DOCKERFILE, re.M)
    for label in ("title", "version", "revision", "created", "licenses", "source"):
        assert f"org.opencontainers.image.{label}=" in DOCKERFILE, label
    env = _docker_env()
    assert env["PHYS_BIDS_CONTAINER"] == "docker"
    assert env["TEMPLATEFLOW_AUTOUPDATE"] == "0"
    # threads are sized by phys-bids from the container's quota, never fixed in the image
    assert not {"OMP_NUM_THREADS", "MKL_NUM_THREADS"} & set(env)


def test_dockerignore_keeps_context_small_and_checkpoints_out():
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*"  # everything excluded unless named
    assert "phys_bids/data/models/*/checkpoint.pt" in ignore
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.M):
        for src in copied.split():
            name = src.rstrip("/")
            assert f"!{name}" in ignore or f"!{name}/" in ignore, src


def test_singularity_definition_parses_and_agrees_with_the_dockerfile():
    spython = pytest.importorskip("spython.main.parse.parsers")
    recipe = spython.SingularityParser(str(ROOT / "Singularity.def")).recipe["spython-base"]
    assert recipe.fromHeader == "phys-bids:latest"
    assert recipe.cmd.strip() == 'exec phys-bids "$@"'
    assert any(lab.startswith("org.opencontainers.image.title phys-bids")
               for lab in recipe.labels)
    env = _env(line.removeprefix("export ").strip() for line in recipe.environ
               if "=" in line)
    assert env.pop("PHYS_BIDS_CONTAINER") == "singularity"
    docker_env = _docker_env()
    for key, value in env.items():  # every shared setting equals the Docker image's
        assert docker_env.get(key) == value, (key, value, docker_env.get(key))
    text = (ROOT / "Singularity.def").read_text()
    assert re.search(r"^Bootstrap: docker-daemon$", text, re.M)
    help_text = text.split("%help", 1)[1]
    for needed in ("--cleanenv", "--nv", "-B", "-w /work"):
        assert needed in help_text, needed


def test_build_script_is_valid_shell():
    out = subprocess.run(["bash", "-n", str(ROOT / "docker" / "build-local.sh")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
