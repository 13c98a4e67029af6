"""Code hashes are computed from what the scripts import, never typed: every scripted rule's hash
covers exactly the import closure an independent walk (bytecode, not wig's ``ast`` reading) finds."""

import dis
import importlib.util
import json
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from wig.provenance import code_files, code_hash, import_closure

pytestmark = pytest.mark.check

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow/scripts"


def _code_objects(code):
    yield code
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            yield from _code_objects(const)


def _spec(name):
    """find_spec without importing more than packages' __init__ (a module's attribute is no module)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        parent = importlib.util.find_spec(".".join(parts[:i]))
        if parent is None or not parent.submodule_search_locations:
            return None
    try:
        return importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return None


def _imported(path: Path, package: str) -> tuple[set[str], set[Path]]:
    """The wig modules one file imports (at any depth of its code) and the data folders it names:
    read from its bytecode's IMPORT_NAME / IMPORT_FROM instructions and string constants."""
    modules, folders = set(), set()
    for code in _code_objects(compile(path.read_text(), str(path), "exec")):
        consts, current, loaded = [], None, []
        for ins in dis.get_instructions(code):
            if ins.opname in ("LOAD_NAME", "LOAD_GLOBAL"):
                loaded.append(ins.argval)
                if loaded[-2:] == [
                    "discover",
                    "__name__",
                ]:  # `discover(__name__)`: the package's modules, as pkgutil lists them
                    found = pkgutil.iter_modules(_spec(package).submodule_search_locations)
                    modules |= {f"{package}.{m.name}" for m in found if not m.name.startswith("_")}
            if ins.opname == "LOAD_CONST":
                consts.append(ins.argval)
                value = ins.argval
                if isinstance(value, str) and value.startswith("wig.") and value.replace(".", "").isidentifier():
                    spec = _spec(value)
                    if spec is not None and spec.submodule_search_locations:  # a package named: its data files
                        folder = Path(list(spec.submodule_search_locations)[0]).resolve()
                        if any(f.is_file() and f.suffix not in (".py", ".pyc") for f in folder.iterdir()):
                            folders.add(folder)
            elif ins.opname == "IMPORT_NAME":
                level = consts[-2] if len(consts) >= 2 else 0
                name = ins.argval
                if level:
                    name = ".".join(
                        package.split(".")[: len(package.split(".")) - level + 1] + ([name] if name else [])
                    )
                current = name
                modules.add(name)
            elif ins.opname == "IMPORT_FROM" and current is not None:
                modules.add(f"{current}.{ins.argval}")
    ours = set()
    for name in modules:
        if name.split(".")[0] == "wig" and _spec(name) is not None and _spec(name).origin not in (None, "namespace"):
            parts = name.split(".")
            ours |= {".".join(parts[: i + 1]) for i in range(len(parts))}  # packages run their __init__
    return ours, folders


def _walk(script: Path) -> set[Path]:
    """The files a script's result depends on, by a breadth-first walk over bytecode imports."""
    seen, folders = set(), set()
    todo, _ = _imported(script, "")
    todo = list(todo)
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        origin = Path(_spec(name).origin)
        package = name if origin.name == "__init__.py" else name.rpartition(".")[0]
        more, data = _imported(origin, package)
        folders |= data
        todo += sorted(more - seen)
    files = {Path(_spec(m).origin).resolve() for m in seen}
    return files | {f.resolve() for d in folders for f in d.iterdir() if f.is_file() and f.suffix != ".py"}


_DUMP = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    configfiles = [Path(f) for f in sys.argv[1:]]
    with SnakemakeApi(OutputSettings()) as api:
        api_wf = api.workflow(resource_settings=ResourceSettings(cores=1),
                              config_settings=ConfigSettings(configfiles=configfiles),
                              storage_settings=StorageSettings(), snakefile=Path("workflow/Snakefile"),
                              workdir=Path("."))
        rules = {}
        for rule in api_wf._workflow.rules:  # the parsed workflow: the rules and their params
            if rule.script:
                script = Path(rule.basedir.get_path_or_uri(secret_free=True)) / rule.script
                rules[rule.name] = {"script": str(script.resolve()), "code": dict(rule.params.items()).get("code")}
    print("RULES " + json.dumps(rules))
""")


def _scripted_rules(configfile: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _DUMP, configfile], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RULES "))
    return json.loads(line[len("RULES ") :])


def test_every_scripted_rule_hashes_exactly_its_scripts_import_closure(tmp_path):
    # the tiny study defines fetch_dataset, the synthetic preset render_dataset, a {tiny: synthetic}
    # entry (the base from scratch) the pretrain rules, packed fine-tunes the train_<pack> rules, a
    # user study with votes its two rules: together, every rule
    scratch = yaml.safe_load((ROOT / "config/presets/synthetic.yaml").read_text())
    scratch["models"]["synthetic"] = {"tiny": "synthetic"}
    scratch["jobs"] = {"subjects_per_job": 2}  # its runs train in packs: rules train_<pack>
    # a user study with its votes named: rules user_study and user_study_table
    methods = {"CFG": {"method": "cfg", "scale": 4.5}, "PG": {"method": "pg", "scale": 4.5, "omega": 0.0}}
    scratch["user_study"] = {"votes": "votes.sqlite", "models": [{"model": "synthetic", "methods": methods}]}
    (tmp_path / "scratch.yaml").write_text(yaml.safe_dump(scratch))
    rules = _scripted_rules(".test/config/tiny.yaml") | _scripted_rules(str(tmp_path / "scratch.yaml"))
    assert {Path(r["script"]).name for r in rules.values()} == {p.name for p in SCRIPTS.glob("*.py")}
    assert {"generate", "train", "score", "render_dataset", "fetch_dataset", "resolve_model"} <= set(rules)
    # one script per rule's work: none branches on which rule runs it
    assert not [p.name for p in SCRIPTS.glob("*.py") if "snakemake.rule" in p.read_text()]
    for name, rule in rules.items():
        walked = _walk(Path(rule["script"]))
        assert set(code_files(rule["script"])) == walked, name
        assert rule["code"] == code_hash(rule["script"]), name


def test_the_closure_follows_lazy_imports_package_data_and_from_imports(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("from wig.evaluation import plots\n\ndef later():\n    from wig.cli import main\n")
    modules, data = import_closure(script)
    # wig.cli imports wig.models.families inside a function, whose base reads wig/configs/*.json; and
    # the config schema, which reads wig/workflow/schema.yaml
    assert {"wig", "wig.evaluation.plots", "wig.cli", "wig.models.base", "wig.evaluation.metrics"} <= set(modules)
    assert {p.name for p in data} == {
        "tiny_sd.json",
        "tiny_sana.json",
        "tiny_sdxl.json",
        "tiny_synthetic.json",
        "schema.yaml",
    }
    assert set(code_files(script)) == _walk(script)
    before = code_hash(script)
    plain = tmp_path / "plain.py"
    plain.write_text("from wig.evaluation import plots\n")
    assert "wig.cli" not in import_closure(plain)[0] and code_hash(plain) != before


@pytest.mark.parametrize("script", ["train", "class_images", "pretrain_vae", "pretrain_model", "build_tiny", "prepare"])
def test_training_and_data_never_reach_the_guidance_methods(script):
    # so a guidance change reruns generation and what follows, never a fine-tune
    modules, _ = import_closure(SCRIPTS / f"{script}.py")
    assert "wig.guidance" not in modules and "wig.sampling.sampler" not in modules


def test_embedding_and_scoring_reach_the_embedding_schema_generation_does_not():
    for script in ("embed_images", "embed_texts", "score", "aggregate"):
        assert "wig.evaluation.embeddings" in import_closure(SCRIPTS / f"{script}.py")[0], script
    generate = import_closure(SCRIPTS / "generate.py")[0]
    assert "wig.evaluation.embeddings" not in generate and {
        "wig.concepts",
        "wig.personalization.lora",
        "wig.provenance",
    } <= set(generate)
