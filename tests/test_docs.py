"""The documentation: the site builds strictly (a broken link or anchor fails it), the README's
links resolve, and every code example in the README and the pages runs in a test — Python run on
the tiny twins (here, or by the test named beside its kind below), shell commands parsed by the
very parser that will read them (wig's, Snakemake's) with the files they name present, configs
read by the schema."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib

import numpy as np
import pytest
import yaml
from markdown.extensions.toc import slugify

from conftest import ROOT, module_snakefile

pytestmark = pytest.mark.check

PAGES = sorted([ROOT / "README.md", ROOT / "config/README.md", *(ROOT / "docs").glob("*.md")])
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _blocks(kind: str | None = None) -> list[tuple[str, str, str]]:
    """(page, language, code) of every fenced block (of one language)."""
    found = []
    for page in PAGES:
        for lang, code in FENCE.findall(page.read_text()):
            if kind is None or lang == kind:
                found.append((page.relative_to(ROOT).as_posix(), lang, code))
    return found


def _mkdocs(config, site) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
    )


def test_the_site_builds_strictly_and_a_broken_link_fails_it(tmp_path):
    built = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "site/install/index.html").is_file() and (tmp_path / "site/workflow/index.html").is_file()
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    listed = set(re.findall(r"[\w-]+\.md", json.dumps(nav)))
    assert listed == {p.name for p in (ROOT / "docs").glob("*.md")}, (
        "a page outside the nav, or a nav entry without a page"
    )
    for broken in ("[the cluster](clusters.md)", "[deploying](workflow.md#no-such-section)"):
        copy = tmp_path / f"copy{len(broken)}"
        shutil.copytree(ROOT / "docs", copy / "docs")
        shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
        with open(copy / "docs/install.md", "a") as page:
            page.write(f"\nSee {broken}.\n")
        proc = _mkdocs(copy / "mkdocs.yml", copy / "site")
        target = broken.split("(")[1].rstrip(")")
        assert proc.returncode != 0 and target in proc.stderr, proc.stderr[-2000:]


def _anchors(page) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slugify(h, "-") for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


@pytest.mark.parametrize("page", ["README.md", "config/README.md"])
def test_every_link_of_the_readmes_resolves(page):
    """The two READMEs are not pages of the site (GitHub shows them): their relative links and
    anchors are checked here."""
    path = ROOT / page
    links = re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", path.read_text()))
    local = [link for link in links if not re.match(r"https?://", link)]
    assert local
    for link in local:
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve()
        assert resolved.exists(), f"{page}: {link} does not exist"
        if anchor:
            assert anchor in _anchors(resolved), f"{page}: {link}: no such section"


# --- every code example runs somewhere ------------------------------------------------------------

# Python examples are run: the README's guider example by test_diffusers_guider.py (full install)
# and test_install.py (the core alone), the sampler example here, docs/plugins.md's example package
# by test_third_party_plugins.py (each block after a `<!-- file: PATH -->` line).


def test_every_python_example_is_one_a_test_runs():
    from test_third_party_plugins import example_files

    plugin_files = set(example_files().values())
    guider = [code for page, _, code in _blocks("python") if page == "README.md" and "PersonalizationGuidance(" in code]
    assert len(guider) == 1
    for page, _, code in _blocks("python"):
        if "PersonalizationGuidance(" in code:
            assert code == guider[0], f"{page}: a guider example that is not the README's (the one the tests run)"
        elif page == "docs/plugins.md":
            assert code in plugin_files, f"{page}: a block that is not a file of the example package"
        else:
            assert page == "docs/library.md" and "sample(" in code, f"{page}: a Python example no test runs"


def test_the_library_page_sampler_example_runs_on_the_twin(tiny_sd, lora_path):
    (code,) = [c for p, _, c in _blocks("python") if p == "docs/library.md" and "sample(" in c]
    runnable = (
        code.replace('"path/or/name"', repr(str(tiny_sd)))
        .replace('"my-lora/"', repr(str(lora_path.parent)))
        .replace("steps=50", "steps=2")
    )
    assert runnable.count(str(tiny_sd)) == 1 and "steps=2" in runnable, "the example changed shape"
    scope: dict = {}
    exec(compile(runnable, "docs/library.md", "exec"), scope)
    (image,) = scope["images"]
    assert np.asarray(image).shape[2] == 3 and np.asarray(image).std() > 0


def test_the_module_example_is_the_project_the_deploy_test_runs():
    (code,) = [c for _, _, c in _blocks("snakemake")]
    assert module_snakefile() == code.replace('"/path/to/wig/workflow/Snakefile"', f'"{ROOT / "workflow/Snakefile"}"')


def test_every_config_example_is_read_by_the_schema():
    from wig.workflow.config_schema import read_config

    blocks = _blocks("yaml")
    assert blocks
    for page, _, code in blocks:
        config = yaml.safe_load(code)
        if page == "docs/plugins.md":  # names the example package's plug-ins: test_third_party_plugins reads it
            continue
        read_config(config, where=page)


def test_every_other_structured_example_parses():
    for page, lang, code in _blocks():
        if lang == "toml":
            tomllib.loads(code)
        elif lang == "json":
            json.loads(code.replace("…", ""))


def _commands(lang: str, code: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped; in a ``console``
    block only the ``$ `` lines (the rest is what they print)."""
    joined = code.replace("\\\n", " ")
    lines = joined.splitlines()
    if lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    commands = []
    for line in lines:
        for part in re.split(r"\s&&\s", line):
            words = shlex.split(part, comments=True)
            if words:
                commands.append(words)
    return commands


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def _check_command(words: list[str], where: str) -> None:
    program, args = words[0], words[1:]
    if program == "wig":
        from wig.cli import build_parser

        try:
            build_parser().parse_args(args)
        except SystemExit as stop:  # --help exits 0; a misspelt option exits 2
            assert stop.code == 0, f"{where}: {shlex.join(words)}"
    elif program == "snakemake":
        from snakemake.cli import get_argument_parser

        parsed = get_argument_parser().parse_args(args)
        for configfile in parsed.configfile or []:
            assert (ROOT / configfile).is_file(), f"{where}: no {configfile}"
        profiles = parsed.profile if isinstance(parsed.profile, list) else [parsed.profile] if parsed.profile else []
        for profile in profiles:
            assert (ROOT / profile).is_dir(), f"{where}: no profile {profile}"
    elif program == "make":
        for arg in args:
            assert "=" in arg or arg in _make_targets(), f"{where}: make has no target {arg}"
    elif program == "pip":
        assert args[0] == "install", where
        extras = set(PYPROJECT["project"]["optional-dependencies"])
        for spec in args[1:]:
            if spec.startswith("-"):
                continue
            named = re.fullmatch(r"(?:wig|\.)(?:\[([\w,-]+)\])?", spec)
            assert named, f"{where}: pip install of something other than wig: {spec}"
            assert set(filter(None, (named[1] or "").split(","))) <= extras, f"{where}: no such extra in {spec}"
    elif program in ("python", "pytest"):
        script = next(a for a in args if not a.startswith("-")).removeprefix("path/to/wig/")
        assert (ROOT / script).exists(), f"{where}: no {script}"
    elif program == "cd":
        pass
    elif program == "mkdocs":
        assert args[0] in ("serve", "build"), where
    else:
        raise AssertionError(f"{where}: a command no test knows how to check: {shlex.join(words)}")


def test_every_shell_example_is_a_command_its_program_accepts():
    checked = 0
    for page, lang, code in _blocks():
        if lang in ("bash", "sh", "console"):
            for words in _commands(lang, code):
                _check_command(words, page)
                checked += 1
    assert checked > 30


def test_a_misspelt_option_in_an_example_would_be_caught():
    with pytest.raises(AssertionError, match="wig generate"):
        _check_command(["wig", "generate", "--omgea", "0"], "here")
    with pytest.raises(AssertionError, match="no such extra"):
        _check_command(["pip", "install", "wig[workflows]"], "here")
    with pytest.raises(AssertionError, match="no config/presets/nope.yaml"):
        _check_command(["snakemake", "--configfile", "config/presets/nope.yaml"], "here")


def test_the_install_page_prints_what_a_core_install_prints(monkeypatch, capsys):
    """docs/install.md's console example is, byte for byte, what `wig serve-study --help` prints
    without flask and waitress (test_install.py sees the same line in a real core install)."""
    import wig.extras
    from wig.cli import main

    (code,) = [c for p, lang, c in _blocks("console") if p == "docs/install.md"]
    command, output = code.strip().splitlines()
    assert command == "$ wig serve-study --help"
    monkeypatch.setattr(wig.extras, "missing", lambda extra: ["flask", "waitress"] if extra == "user-study" else [])
    assert main(["serve-study", "--help"]) == 1
    assert capsys.readouterr().err == output + "\n"
