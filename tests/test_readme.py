"""The README's commands against the repository: configs exist, run and checkpoint paths are the
configs' own output_dir / init_from, every `python -m MODULE` and `make TARGET` exists, and the
config table's memory column is what the planner prints today. Nothing here trains."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CONFIGS = {p.name: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "configs").glob("*.yaml"))}

CONFIG_RE = re.compile(r"configs/(?![A-Z]+\.yaml)[\w.-]+\.yaml")  # configs/X.yaml in prose is a placeholder
RUN_RE = re.compile(r"(?<![\w/])runs/[\w.-]+")
CKPT_RE = re.compile(r"(?<![\w/])checkpoints/[\w.-]+")
MODULE_RE = re.compile(r"(?:^|\s)-m\s+([A-Za-z_][\w.]*)")


def shell_blocks(text: str) -> list[str]:
    """The bodies of ```bash / ```sh fences (also indented ones inside list items), continuation lines joined."""
    blocks, body, lang = [], None, None
    for line in text.splitlines():
        fence = line.strip()
        if fence.startswith("```"):
            if body is None:
                body, lang = [], fence[3:].strip()
            else:
                if lang in ("bash", "sh", "shell"):
                    blocks.append("\n".join(body).replace("\\\n", " "))
                body = None
            continue
        if body is not None:
            body.append(line.strip())
    assert body is None, "README.md has an unclosed code fence"
    return blocks


BLOCKS = shell_blocks(README)


def output_dir(name: str) -> str | None:
    return CONFIGS[name].get("output_dir")


def init_from(name: str) -> str | None:
    model = CONFIGS[name].get("model")
    return model.get("init_from") if isinstance(model, dict) else None


def block_configs(block: str) -> list[str]:
    return [m.split("/", 1)[1] for m in CONFIG_RE.findall(block)]


def test_blocks_found():
    # The parser must see the quickstart, or every check below passes vacuously.
    assert len(BLOCKS) >= 8
    assert any("--config configs/alpaca_7b.yaml" in b for b in BLOCKS)


def test_every_named_config_exists():
    named = {c for b in BLOCKS for c in block_configs(b)} | {m.split("/", 1)[1] for m in CONFIG_RE.findall(README)}
    missing = sorted(c for c in named if c not in CONFIGS)
    assert not missing, f"README names configs that are not in configs/: {missing}"


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_paths_agree_with_the_configs_beside_them(i):
    """A runs/X or checkpoints/X in a block that names configs is one of those configs' output_dir / init_from."""
    block = BLOCKS[i]
    names = [c for c in block_configs(block) if c in CONFIGS]
    runs = {output_dir(c) for c in names} - {None}
    ckpts = {init_from(c) for c in names} - {None}
    for path in RUN_RE.findall(block):
        if runs:
            assert path in runs, f"block {i}: {path} is not the output_dir of {names} ({sorted(runs)})"
    for path in CKPT_RE.findall(block):
        if ckpts:
            assert path in ckpts, f"block {i}: {path} is not the init_from of {names} ({sorted(ckpts)})"


def test_every_run_and_checkpoint_path_belongs_to_a_config():
    """Anywhere in the README (prose included): runs/X is some config's output_dir, checkpoints/X some init_from."""
    outs = {output_dir(c) for c in CONFIGS} - {None}
    inits = {init_from(c) for c in CONFIGS} - {None}
    assert sorted(set(RUN_RE.findall(README)) - outs) == []
    assert sorted(set(CKPT_RE.findall(README)) - inits) == []


def test_quickstart_paths_are_the_7b_configs():
    """The quickstart's convert destination, chat checkpoint and export source, read from alpaca_7b.yaml."""
    cfg_out, cfg_init = output_dir("alpaca_7b.yaml"), init_from("alpaca_7b.yaml")
    commands = [shlex.split(line, comments=True) for b in BLOCKS for line in b.splitlines() if line.strip()]
    converts = [c for c in commands if c[:4] == ["python", "-m", "tools.convert", "meta"]]
    assert any(c[5] == cfg_init for c in converts if "/LLaMA/7B" in c[4])
    chats = [c[c.index("--ckpt") + 1] for c in commands if "tools.chat" in c and "--ckpt" in c]
    assert f"{cfg_out}/final" in chats
    exports = [c[4] for c in commands if c[:4] == ["python", "-m", "tools.convert", "to-hf"]]
    assert exports == [f"{cfg_out}/final"]
    plots = [c[3] for c in commands if c[:3] == ["python", "-m", "tools.plot"]]
    assert cfg_out in plots
    for c in chats:  # every --ckpt is some run's export (or the tiny default's)
        assert c.endswith("/final") and c[: -len("/final")] in {output_dir(n) for n in CONFIGS}


def test_every_python_module_resolves_to_a_file():
    modules = {m for b in BLOCKS for m in MODULE_RE.findall(b)} | set(re.findall(r"python -m ([A-Za-z_][\w.]*)", README))
    assert {"train", "tools.convert", "tools.chat", "tools.plan", "tools.plot"} <= modules
    for mod in sorted(modules):
        base = ROOT / mod.replace(".", "/")
        assert base.with_suffix(".py").is_file() or (base / "__main__.py").is_file(), f"python -m {mod}: no module file"


def test_every_make_target_exists():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"(?<![\w-])make ([a-z][\w-]*)", README))
    assert named, "no make targets found"
    assert sorted(named - targets) == []


def config_table() -> dict[str, str]:
    """config file -> its row of the README's config table."""
    rows = {}
    for line in README.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and cells[0].endswith(".yaml`"):
            for name in re.findall(r"`([\w.-]+\.yaml)`", cells[0]):
                rows[name] = cells
    return rows


def test_config_table_lists_every_config_with_its_init_from():
    rows = config_table()
    assert sorted(rows) == sorted(CONFIGS)
    for name, cells in rows.items():
        if init_from(name):
            assert f"`{init_from(name)}`" in cells[1], f"{name}: the table's model cell does not name {init_from(name)}"


def planner_command(name: str) -> list[str]:
    """The planner arguments a config's header gives for its memory line."""
    header = (ROOT / "configs" / name).read_text()
    m = re.search(r"Memory \(python -m tools\.plan ([^)]*)\)", header)
    assert m, f"configs/{name}: no 'Memory (python -m tools.plan ...)' header line"
    return shlex.split(m.group(1))


def test_memory_column_is_what_the_planner_prints(capsys):
    from tools import plan

    rows = {n: cells for n, cells in config_table().items() if re.search(r"\d+\.\d\d GB", cells[3])}
    assert "alpaca_7b.yaml" in rows and len(rows) >= 8
    for name, cells in rows.items():
        rc = plan.main(planner_command(name))
        out = capsys.readouterr().out
        assert rc == 0, f"{name}: the planner says it does not fit"
        total = re.search(r"total\s+(\d+\.\d\d) GB", out).group(1)
        assert cells[3] == f"{total} GB", f"{name}: README says {cells[3]}, the planner {total} GB"
