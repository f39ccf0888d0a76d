"""The zerospeed test matrix, builds, docs and releases.

Run ``python3 -m nox`` for the whole matrix (what CI runs), ``nox -l`` to list sessions.

[Note: torch in every venv]
Every session that imports torch installs it first, from ``$ZEROSPEED_TORCH`` when set (any
pip arguments, e.g. ``"torch==2.5.1 --index-url <your CUDA index>"`` or a wheel path), and
otherwise only from a wheel already on this machine (pip's find-links): on a machine without
one the session stops and says how to point it at a build, instead of letting pip pull a
multi-GB CUDA build from the index. Later installs are constrained to the torch that is then
present, so no package can swap it out.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import nox
import tomllib
from nox.command import CommandFailed

ROOT = Path(__file__).parent
PACKAGES_DIR = ROOT / "packages"

#: Every sibling package: distribution name -> import name. Add a row when a package lands.
PACKAGES: dict[str, str] = {
    "zero-sched": "zero_sched",
    "zero-optim": "zero_optim",
    "zero-aio": "zero_aio",
    "zero-profiler": "zero_profiler",
    "zero-core": "zero_core",
    "zero-moe": "zero_moe",
}
META = "zerospeed"

DEFAULT_TORCH = "torch==2.13.0"
TORCH_ENV = "ZEROSPEED_TORCH"
#: Set by .ci/run: the build session deletes each clean-install venv once its import passed.
PRUNE_ENV = "ZEROSPEED_PRUNE_VENVS"
TEST_DEPS = ["pytest>=8"]
#: Optional extras installed with a package for its tests (declared in its pyproject).
TEST_EXTRAS: dict[str, str] = {"zero-sched": "plot"}

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = [
    "lint",
    "versions",
    *(f"tests-{name}" for name in PACKAGES),
    "tests-all",
    "docs",
    "build",
]


def _pyproject(dist: str) -> dict:
    path = ROOT / "pyproject.toml" if dist == META else PACKAGES_DIR / dist / "pyproject.toml"
    return tomllib.loads(path.read_text())


def _dist_dir(dist: str) -> Path:
    return ROOT if dist == META else PACKAGES_DIR / dist


def _name_of(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def local_siblings(dist: str) -> list[str]:
    """The sibling packages ``dist`` declares as runtime dependencies, transitively."""
    found: list[str] = []
    for req in _pyproject(dist)["project"].get("dependencies", []):
        name = _name_of(req)
        if name in PACKAGES and name not in found:
            found += [s for s in local_siblings(name) if s not in found] + [name]
    return found


def _version(dist: str) -> str:
    """The version written once in the package (``__version__`` in its ``__init__``)."""
    import_name = PACKAGES.get(dist, META)
    init = _dist_dir(dist) / "src" / import_name / "__init__.py"
    match = re.search(r'^__version__ = "([^"]+)"', init.read_text(), re.M)
    if not match:
        raise RuntimeError(f"{init} has no __version__ line")
    return match.group(1)


def install_torch(session: nox.Session) -> list[str]:
    """Install torch (see [Note: torch in every venv]); return pip args pinning it."""
    spec = os.environ.get(TORCH_ENV)
    if spec:
        session.install(*shlex.split(spec))
    else:
        try:
            session.install("--no-index", "--no-deps", DEFAULT_TORCH)
        except CommandFailed:
            free_gib = shutil.disk_usage(session.virtualenv.location).free / 2**30
            session.error(
                f"could not install {DEFAULT_TORCH} from a wheel on this machine (pip's error is "
                f"above; {free_gib:.1f} GiB free on the venv's disk, torch needs about 1 GiB). "
                f"Without a local wheel, set {TORCH_ENV} to the pip arguments for the torch you "
                f"want, e.g. {TORCH_ENV}='torch==2.13.0 --index-url <CPU or CUDA wheel index>' "
                f"or a path to a wheel."
            )
        session.install(DEFAULT_TORCH)  # its own dependencies, from the index
    version = (
        session.run("python", "-c", "import torch; print(torch.__version__)", silent=True)
        .strip()
        .splitlines()[-1]
    )
    pin = Path(session.create_tmp()) / "torch-pin.txt"
    pin.write_text(f"torch=={version}\n")
    return ["-c", str(pin)]


def install_local(session: nox.Session, pin: list[str], *dists: str) -> None:
    """Install local distributions and their dependencies (with the extras in TEST_EXTRAS).

    They are first force-reinstalled without dependencies so a reused venv always runs the
    code in this checkout, never a stale build with the same version number.
    """
    paths = [str(_dist_dir(d)) for d in dists]
    session.install(*pin, "--force-reinstall", "--no-deps", *paths)
    with_extras = [
        f"{path}[{TEST_EXTRAS[d]}]" if d in TEST_EXTRAS else path for d, path in zip(dists, paths)
    ]
    session.install(*pin, *with_extras)


def _package_session(dist: str) -> None:
    siblings = local_siblings(dist)

    @nox.session(name=f"tests-{dist}")
    def tests(session: nox.Session) -> None:
        pin = install_torch(session)
        install_local(session, pin, *siblings, dist)
        session.install(*pin, *TEST_DEPS)
        session.chdir(_dist_dir(dist))
        session.run("python", "-m", "pytest", *session.posargs)

    tests.__doc__ = (
        f"{dist}'s tests in a venv holding only torch, {dist}"
        + (f", {', '.join(siblings)}" if siblings else "")
        + " and its declared extras: proves the standalone install works."
    )


for _dist in PACKAGES:
    _package_session(_dist)


@nox.session(name="tests-all")
def tests_all(session: nox.Session) -> None:
    """Every package plus the meta-package in one venv: each package's tests, then tests/."""
    pin = install_torch(session)
    install_local(session, pin, *PACKAGES, META)
    session.install(*pin, *TEST_DEPS)
    for dist in PACKAGES:
        session.chdir(_dist_dir(dist))
        session.run("python", "-m", "pytest", *session.posargs)
    session.chdir(ROOT)
    session.run("python", "-m", "pytest", "tests", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole repository."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=False)
def versions(session: nox.Session) -> None:
    """Each package's version, CHANGELOG and the meta-package's pins agree."""
    problems = []
    for dist in PACKAGES:
        version = _version(dist)
        changelog = (_dist_dir(dist) / "CHANGELOG.md").read_text()
        if not re.search(rf"^## \[?{re.escape(version)}\]?", changelog, re.M):
            problems.append(f"{dist}: CHANGELOG.md has no '## {version}' section")
    pins = {_name_of(r): r for r in _pyproject(META)["project"]["dependencies"]}
    for dist in PACKAGES:
        wanted = f"{dist}=={_version(dist)}"
        if pins.get(dist, "").replace(" ", "") != wanted:
            problems.append(
                f"root pyproject.toml must depend on '{wanted}', has {pins.get(dist)!r}"
            )
    if problems:
        session.error("\n".join(problems))
    session.log("versions agree: " + ", ".join(f"{d} {_version(d)}" for d in [*PACKAGES, META]))


@nox.session
def docs(session: nox.Session) -> None:
    """Build the Sphinx docs with warnings as errors (API pages come from docstrings)."""
    pin = install_torch(session)
    install_local(session, pin, *PACKAGES, META)
    session.install(*pin, "-r", str(ROOT / "docs" / "requirements.txt"))
    session.run(
        "sphinx-build",
        "-W",
        "--keep-going",
        "-b",
        "html",
        "-d",
        str(ROOT / "docs/_build/doctrees"),
        str(ROOT / "docs"),
        str(ROOT / "docs/_build/html"),
    )


def _build_dist(session: nox.Session, dist: str, outdir: Path) -> list[Path]:
    before = set(outdir.glob("*"))
    session.run(
        "python", "-m", "build", "--sdist", "--wheel", "--outdir", str(outdir), str(_dist_dir(dist))
    )
    return sorted(set(outdir.glob("*")) - before)


@nox.session
def build(session: nox.Session) -> None:
    """sdist + wheel of every package into dist/; each wheel is then installed into a clean
    venv (with torch and the sibling wheels it declares) and imported."""
    session.install("build")
    outdir = ROOT / "dist"
    outdir.mkdir(exist_ok=True)
    for dist in [*PACKAGES, META]:
        for old in outdir.glob(f"{dist.replace('-', '_')}-*"):
            old.unlink()
        _build_dist(session, dist, outdir)
    tmp = Path(session.create_tmp())
    for dist in [*PACKAGES, META]:
        venv = tmp / f"clean-{dist}"
        session.run(sys.executable, "-m", "venv", "--clear", str(venv), external=True)
        python = str(venv / "bin" / "python")
        spec = shlex.split(os.environ.get(TORCH_ENV, "")) or [
            "--no-index",
            "--no-deps",
            DEFAULT_TORCH,
        ]
        session.run(python, "-m", "pip", "install", "-q", *spec, external=True)
        if not os.environ.get(TORCH_ENV):
            session.run(python, "-m", "pip", "install", "-q", DEFAULT_TORCH, external=True)
        wheel = next(outdir.glob(f"{dist.replace('-', '_')}-{_version(dist)}-*.whl"))
        session.run(
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--find-links",
            str(outdir),
            str(wheel),
            external=True,
        )
        import_name = PACKAGES.get(dist, META)
        session.run(
            python,
            "-c",
            f"import {import_name}; print({import_name}.__name__, {import_name}.__version__)",
            external=True,
        )
        if os.environ.get(PRUNE_ENV):
            shutil.rmtree(venv)  # each holds a torch; .ci/run keeps CI's disk use near 2 GB


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: train a small GPT on 2 CPU processes with ZeRO-3 and bf16 (demo/).

    Trains the first half of the schedule and saves, resumes in new processes and finishes,
    converts the checkpoint to one fp32 safetensors file and samples text from it with the
    plain model. Arguments after ``--`` go to demo/train.py (e.g. ``-- --steps 100``).
    """
    pin = install_torch(session)
    install_local(session, pin, *PACKAGES, META)
    session.install(*pin, "matplotlib")
    out = ROOT / "demo-out"
    if out.exists():
        shutil.rmtree(out)
    train = ["zerospeed", "launch", "--nproc-per-node", "2", str(ROOT / "demo" / "train.py")]
    train += ["--out", str(out), *session.posargs]
    session.run(*train, "--stop-at", "half")
    session.run(*train, "--resume")
    weights = str(out / "model.safetensors")
    session.run("zerospeed", "convert", str(out / "checkpoints"), weights, "--safetensors")
    session.run("python", str(ROOT / "demo" / "sample.py"), weights)


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmark in bench/ (prints tables; never part of the test matrix)."""
    pin = install_torch(session)
    install_local(session, pin, *PACKAGES, META)
    for script in sorted((ROOT / "bench").glob("*.py")):
        session.run("python", str(script), *session.posargs)


@nox.session(python=False)
def release(session: nox.Session) -> None:
    """Build and tag one package: ``nox -s release -- zero-sched``.

    Checks the tree is clean and the CHANGELOG has the version's section, builds sdist and
    wheel into dist/<package>/, and creates the annotated tag ``<package>-v<version>``.
    Pushing the tag and uploading (``twine upload dist/<package>/*``) stay manual.
    """
    if len(session.posargs) != 1 or session.posargs[0] not in [*PACKAGES, META]:
        session.error(f"usage: nox -s release -- <{'|'.join([*PACKAGES, META])}>")
    dist = session.posargs[0]
    version = _version(dist)
    tag = f"{dist}-v{version}"
    if subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
    ).stdout:
        session.error("the working tree has uncommitted changes; commit or stash them first")
    if (
        subprocess.run(
            ["git", "rev-parse", "-q", "--verify", f"refs/tags/{tag}"],
            cwd=ROOT,
            capture_output=True,
        ).returncode
        == 0
    ):
        session.error(f"tag {tag} already exists; bump the version in {dist}'s __init__.py first")
    changelog = (_dist_dir(dist) / "CHANGELOG.md").read_text() if dist != META else ""
    heading = re.search(rf"^## \[?{re.escape(version)}\]?.*$", changelog, re.M)
    if dist != META and not heading:
        session.error(f"{dist}/CHANGELOG.md has no '## {version}' section")
    if heading and "unreleased" in heading.group(0).lower():
        session.error(f"{dist}/CHANGELOG.md still calls {version} unreleased; put the date there")
    outdir = ROOT / "dist" / dist
    outdir.mkdir(parents=True, exist_ok=True)
    session.run(sys.executable, "-m", "pip", "install", "-q", "build", external=True)
    session.run(
        sys.executable, "-m", "build", "--outdir", str(outdir), str(_dist_dir(dist)), external=True
    )
    session.run("git", "tag", "-a", tag, "-m", f"{dist} {version}", external=True)
    session.log(f"tagged {tag}; artifacts in {outdir}")
