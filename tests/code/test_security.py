"""Security basics: no unpickling from disk, servers on loopback, no committed secrets, Airflow
authentication kept on, text cut before it reaches the tokenizer.

Published docker ports (127.0.0.1 only) and secrets in docker/compose.yaml are checked in test_docker.py.
Each scanner is also run on a planted example, so a scanner that silently matches nothing fails here.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CODE_DIRS = ("pipeline", "dags", "bench")


def repo_files() -> list[Path]:
    """Tracked files plus new files git does not ignore (what the next commit can contain)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [REPO / p for p in out.split("\0") if p and (REPO / p).is_file()]


def python_files() -> list[Path]:
    return [p for d in CODE_DIRS for p in sorted((REPO / d).rglob("*.py"))]


# ---- deserialisation ------------------------------------------------------------------------------------


def _name(node: ast.AST) -> str:
    """Dotted name of a call target: `torch.load`, `pickle.loads`, `np.load`, ..."""
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


UNSAFE = {f"{mod}.{fn}" for mod in ("pickle", "cloudpickle", "dill", "joblib") for fn in ("load", "loads")}


def unsafe_loads(source: str) -> list[str]:
    """Calls that can run code from a file: pickle-family loads, torch.load without weights_only=True,
    numpy loads with allow_pickle=True. Returns 'line: call' strings."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        kw = {k.arg: k.value for k in node.keywords}
        const = {k: v.value for k, v in kw.items() if isinstance(v, ast.Constant)}
        if name in UNSAFE or name.endswith("read_pickle"):
            found.append(f"{node.lineno}: {name}")
        elif name.endswith("torch.load") or (name == "load" and "weights_only" in kw):
            if const.get("weights_only") is not True:
                found.append(f"{node.lineno}: {name} without weights_only=True")
        elif name.endswith(("np.load", "numpy.load")) and const.get("allow_pickle", False) is not False:
            found.append(f"{node.lineno}: {name} with allow_pickle")
    return found


def test_unsafe_load_scanner_catches_planted_calls():
    planted = (
        "import torch, pickle, numpy as np\n"
        "torch.load(p)\ntorch.load(p, weights_only=False)\npickle.loads(b)\nnp.load(p, allow_pickle=True)\n"
        "torch.load(p, map_location='cpu', weights_only=True)\nnp.load(p)\n"
    )
    no_weights_only = "torch.load without weights_only=True"
    assert unsafe_loads(planted) == [
        f"2: {no_weights_only}",
        f"3: {no_weights_only}",
        "4: pickle.loads",
        "5: np.load with allow_pickle",
    ]


def test_no_code_runs_from_loaded_files():
    found = {str(p.relative_to(REPO)): hits for p in python_files() if (hits := unsafe_loads(p.read_text()))}
    assert found == {}
    assert any("torch.load" in p.read_text() for p in python_files()), "scanner sees no torch.load at all"


# ---- servers on loopback --------------------------------------------------------------------------------

SERVER = re.compile(
    r"\b(mlflow\s+(ui|server|models\s+serve)|airflow\s+(standalone|api-server)|http\.server|"
    r"uvicorn|gunicorn)\b"
)


def _logical_lines(text: str) -> list[str]:
    return text.replace("\\\n", " ").splitlines()


def shell_servers_off_loopback(text: str) -> list[str]:
    """Makefile / shell lines that start a server without binding it to 127.0.0.1.

    Make variables used on the line are expanded once (the Makefile passes AIRFLOW__API__HOST that way)."""
    lines = _logical_lines(text)
    defs = dict(
        re.match(r"^([A-Z_]+)\s*:?=\s*(.*)$", ln).groups() for ln in lines if re.match(r"^[A-Z_]+\s*:?=", ln)
    )
    bad = []
    for ln in lines:
        if not SERVER.search(ln) or ln.lstrip().startswith("#") or "echo" in ln.split()[:2]:
            continue
        full = re.sub(r"\$\(([A-Z_]+)\)", lambda m: defs.get(m.group(1), ""), ln)
        host = re.search(r"(--host[= ]|-h |AIRFLOW__API__HOST=)(\S+)", full)
        if not host or host.group(2) != "127.0.0.1":
            bad.append(ln.strip())
    return bad


def test_loopback_scanner_catches_planted_lines():
    planted = (
        "ENV := AIRFLOW__API__HOST=127.0.0.1\nX := A=1\nok:\n\t$(ENV) airflow standalone\n"
        "bad:\n\t$(X) airflow standalone\n\tmlflow ui --host 0.0.0.0\n\tmlflow server \\\n\t  --port 5000\n"
        "\tmlflow ui --host 127.0.0.1 --port 5000\n"
    )
    assert len(shell_servers_off_loopback(planted)) == 3


def test_servers_started_by_the_project_bind_loopback():
    shell = [p for p in repo_files() if p.name == "Makefile" or p.suffix == ".sh" or p.parent.name == ".ci"]
    assert "airflow standalone" in (REPO / "Makefile").read_text()  # so the scan below has work to do
    assert {
        str(p.relative_to(REPO)): b for p in shell if (b := shell_servers_off_loopback(p.read_text()))
    } == {}
    # Servers the tests start: every argv list that runs a server names 127.0.0.1 (Airflow: through
    # AIRFLOW__API__HOST in the same file) and never 0.0.0.0.
    starts, bad = [], []
    for path in sorted((REPO / "tests").rglob("*.py")):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.List):
                continue
            words = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if not {"server", "serve", "ui", "standalone", "api-server"} & set(words):
                continue
            starts.append(f"{path.relative_to(REPO)}:{node.lineno}")
            if words[:1] == ["make"]:
                continue  # a Makefile target (`make serve`): the Makefile's own lines are scanned above
            airflow = {"standalone", "api-server"} & set(words)
            loopback = (
                re.search(r"AIRFLOW__API__HOST\W+127\.0\.0\.1\W", text) if airflow else "127.0.0.1" in words
            )
            if not loopback or "0.0.0.0" in words:
                bad.append(starts[-1])
    assert starts, "the scan found no server started by the tests"
    assert bad == []


# ---- secrets --------------------------------------------------------------------------------------------

SECRET_PATTERNS = [
    ("private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("AWS access key", re.compile(r"\bAKIA[0-9A-Z]{16}\b")),
    ("GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("Slack token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    ("OpenAI/HF token", re.compile(r"\b(sk-[A-Za-z0-9]{32,}|hf_[A-Za-z0-9]{30,})\b")),
    ("password in a URL", re.compile(r"://[^/\s:@]+:([^@\s/$]{4,})@")),
    # a quoted literal assigned to a secret-like name (code, JSON, YAML) ...
    (
        "assigned secret",
        re.compile(
            r"(?i)\b\w*(password|passwd|secret|token|api_key|fernet_key)\w*['\"]?\s*[:=]\s*"
            r"['\"]([^'\"\s]{8,})['\"]"
        ),
    ),
    # ... or a bare value on a `KEY=value` / `key: value` line (env files, YAML)
    (
        "assigned secret",
        re.compile(
            r"(?im)^\s*\w*(password|passwd|secret|token|api_key|fernet_key)\w*\s*[:=]\s*"
            r"([^\s'\"#()]{8,})\s*$"
        ),
    ),
]
# A value is a placeholder, not a secret, when it says so or is filled in from elsewhere at run time. The
# tests' throwaway JWT secrets ("mtl-tests-...", "mtl-ui-test-...") sign tokens of a loopback server that
# lives for one test session.
PLACEHOLDER = re.compile(
    r"(?i)^(change-me|changeme|example|placeholder|xxx|your|dummy|redacted|none|null|"
    r"true|false|self\.|os\.|env|cfg\.|config|mtl-tests-|mtl-ui-test-)|\$|\{"
)


def secrets_in(text: str) -> list[str]:
    hits = []
    for kind, pattern in SECRET_PATTERNS:
        for m in pattern.finditer(text):
            value = m.group(m.lastindex) if m.lastindex else m.group(0)
            if kind in ("assigned secret", "password in a URL") and PLACEHOLDER.search(value):
                continue
            line = text.count("\n", 0, m.start()) + 1
            hits.append(f"{line}: {kind}")
    return hits


def test_secret_scanner_catches_planted_secrets():
    key = "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIE\n"
    planted = (
        key + "aws = 'AKIA" + "ABCDEFGHIJKLMNOP'\nPOSTGRES_PASSWORD=s3cretValue9\n"
        "uri = 'postgresql://mlflow:hunter2hunter@db/mlflow'\nPOSTGRES_PASSWORD=change-me\n"
        "password: ${POSTGRES_PASSWORD}\n"
    )
    kinds = [h.split(": ")[1] for h in secrets_in(planted)]
    assert kinds == ["private key", "AWS access key", "password in a URL", "assigned secret"]


def test_no_secrets_in_the_repository():
    found = {}
    for path in repo_files():
        if path == Path(__file__) or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if hits := secrets_in(text):
            found[str(path.relative_to(REPO))] = hits
    assert found == {}


def test_env_files_with_real_secrets_cannot_be_committed():
    example = (REPO / "docker" / ".env.example").read_text()
    values = dict(ln.split("=", 1) for ln in example.splitlines() if ln and not ln.startswith("#"))
    for key in ("POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "AIRFLOW__API_AUTH__JWT_SECRET"):
        assert values[key].startswith("change-me"), f"docker/.env.example {key} is not a placeholder"
    for path in ("docker/.env", ".env"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], check=False, cwd=REPO)
        assert ignored.returncode == 0, (
            f"{path} (a filled-in copy of docker/.env.example) must be git-ignored"
        )


# ---- Airflow authentication -----------------------------------------------------------------------------

AUTH_OFF = re.compile(
    r"(?i)(SIMPLE_AUTH_MANAGER_ALL_ADMINS|simple_auth_manager_all_admins)\W{1,5}['\"]?(true|1)\b|"
    r"AUTH_ROLE_PUBLIC\s*=\s*['\"]Admin|AUTH_MANAGER\W{1,5}['\"]?\S*NoAuth"
)


def test_airflow_authentication_is_not_disabled_anywhere():
    assert AUTH_OFF.search("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True")
    assert AUTH_OFF.search('"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "true"')
    files = [p for p in repo_files() if p != Path(__file__) and p.suffix != ".png"]
    assert [str(p.relative_to(REPO)) for p in files if AUTH_OFF.search(p.read_text(errors="replace"))] == []


def test_airflow_as_configured_for_the_tests_requires_login():
    from airflow.configuration import conf

    assert conf.getboolean("core", "simple_auth_manager_all_admins") is False
    assert conf.get("core", "auth_manager").endswith("SimpleAuthManager")


# ---- text cut before tokenisation -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder():
    import torch

    from pipeline.config import TextConfig
    from pipeline.features.text import load_encoder

    torch.set_num_threads(1)
    return load_encoder(TextConfig(), device="cpu")


class Recording:
    """The real tokenizer, remembering the texts it was given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.seen = tokenizer, []

    def __call__(self, texts, **kwargs):
        self.seen += list(texts)
        return self.tokenizer(texts, **kwargs)


def test_long_title_is_cut_before_the_tokenizer(encoder):
    import numpy as np

    from pipeline.config import TextConfig
    from pipeline.features.text import embed, tokenize

    tcfg = TextConfig(max_chars=512)
    title = "leather backpack 🎒 حقيبة " * 400
    assert len(title) >= 10_000
    tokenizer = Recording(encoder[0])
    vecs = embed([title, "short bag"], tcfg, encoder=(tokenizer, encoder[1]), progress=False)
    assert vecs.shape == (2, 384) and np.isfinite(vecs).all()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    tokens = tokenize([title], tcfg, tokenizer)
    assert tokens["input_ids"].shape == (1, tcfg.max_length)
    assert tokenizer.seen and max(len(t) for t in tokenizer.seen) <= tcfg.max_chars
    same = embed([title[:512]], tcfg, encoder=encoder, progress=False)
    np.testing.assert_allclose(vecs[0], same[0], atol=1e-6)
