"""The house's rules, read from the sources: every plug-in (guidance method, personalization
method, metric, encoder kind) is named in its own module only, and the import graph runs one way
— down the floors listed in `LAYERS` — without circles."""

import ast
import inspect
import re
from collections import defaultdict
from pathlib import Path

import pytest

from wig.evaluation.encoders import ENCODERS
from wig.evaluation.metrics import REGISTRY as METRICS
from wig.guidance import REGISTRY as GUIDANCE
from wig.models.families import FAMILIES
from wig.personalization import REGISTRY as PERSONALIZATION

pytestmark = pytest.mark.check

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "wig"

# --- names ---------------------------------------------------------------------------------

LOOKUPS = {"make", "Guidance", "method_class", "encoder_class", "build_tiny_encoder", "Metric"}  # first argument
NAME_KEYWORDS = {"method", "encoder", "kind", "metric", "objective"}
ORDINARY_WORDS = {"none", "given", "scene"}  # names that are also English: not looked for in help texts


def name_uses(tree: ast.AST, names):
    """String constants used as a plug-in's name: compared, collected in a literal, passed to a
    registry lookup, given as ``method=``/``encoder=``/``kind=``/…, used as a subscript — or
    named, as a word, in a command-line ``help=`` text."""
    for node in ast.walk(tree):
        operands, texts = [], []
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            operands = node.elts
        elif isinstance(node, ast.Dict):
            operands = [k for k in node.keys if k is not None] + node.values
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            operands = (node.args[:1] if name in LOOKUPS else []) + [
                k.value for k in node.keywords if k.arg in NAME_KEYWORDS
            ]
            texts = [k.value for k in node.keywords if k.arg == "help"]
        elif isinstance(node, ast.Subscript):
            operands = [node.slice]
        for op in operands:
            for const in ast.walk(op):
                if isinstance(const, ast.Constant) and const.value in names:
                    yield const.value, const.lineno
        for text in texts:
            for const in ast.walk(text):
                if isinstance(const, ast.Constant) and isinstance(const.value, str):
                    for name in names - ORDINARY_WORDS:
                        if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", const.value):
                            yield name, const.lineno


def _metric_homes() -> dict[str, Path]:
    """Where each shipped metric is defined: the module whose ``Metric("<name>", …)`` it is."""
    homes = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Metric" and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and first.value in METRICS:
                    homes[first.value].add(path.resolve())
    assert set(homes) == set(METRICS), f"metrics registered without a Metric(...) call: {set(METRICS) - set(homes)}"
    assert all(len(v) == 1 for v in homes.values()), homes
    return {name: next(iter(paths)) for name, paths in homes.items()}


def _homes() -> dict[str, dict[str, Path]]:
    classes = {
        "guidance": GUIDANCE,
        "personalization": PERSONALIZATION,
        "encoder": ENCODERS,
        "family": FAMILIES,
    }
    homes = {what: {n: Path(inspect.getfile(c)).resolve() for n, c in reg.items()} for what, reg in classes.items()}
    homes["metric"] = _metric_homes()
    return homes


def _constants(tree: ast.AST, names):
    """Every string constant that is one of ``names`` (a model family's name: short and no word)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in names:
            yield node.value, node.lineno


def _named_outside(homes: dict[str, Path], files, strict: bool = False) -> list[str]:
    names = set(homes)
    found = []
    for path in files:
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
        if path.suffix == ".py":
            uses = _constants if strict else name_uses
            for value, line in uses(ast.parse(path.read_text()), names):
                if homes[value] != path.resolve():
                    found.append(f"{where}:{line} {value}")
        else:  # Snakemake syntax: any quoted name
            for line_no, line in enumerate(path.read_text().splitlines(), 1):
                for value in names:
                    if re.search(rf"""["']{re.escape(value)}["']""", line):
                        found.append(f"{where}:{line_no} {value}")
    return found


CODE = sorted([*PACKAGE.rglob("*.py"), *(ROOT / "workflow").rglob("*.py"), ROOT / "workflow/Snakefile"])
CODE += sorted((ROOT / "workflow").rglob("*.smk"))


@pytest.mark.parametrize("what", ["guidance", "personalization", "metric", "encoder", "family"])
def test_each_shipped_plugin_is_named_in_its_own_module_only(what):
    homes = _homes()[what]
    assert len(homes) >= 4
    assert _named_outside(homes, CODE, strict=what == "family") == []


PLUGIN_PACKAGES = {  # the package whose modules are a kind's plug-ins (`wig.plugins.discover`)
    "guidance": PACKAGE / "guidance/methods",
    "personalization": PACKAGE / "personalization/methods",
    "metric": PACKAGE / "evaluation/plugins",
    "encoder": PACKAGE / "evaluation/plugins",
    "family": PACKAGE / "models/families",
}


def _schema_names(node, names, path=()):
    """Plug-in names the config schema holds outside its descriptions: as a value (an ``enum``, a
    ``default``) or as a key inside a default."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description":
                continue
            if "default" in path and key in names:
                yield ".".join(map(str, path + (key,)))
            yield from _schema_names(value, names, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _schema_names(value, names, path + (i,))
    elif isinstance(node, str) and node in names:
        yield f"{'.'.join(map(str, path))} = {node}"


def test_the_config_schema_names_no_plugin_its_registries_fill_them_in():
    """The schema ships without a plug-in's name (its family/tiny choices and its default fine-tune and
    encoders come from the registries when it is read), and reads with them filled in."""
    import yaml

    from wig.workflow.config_schema import schema, schema_text

    names = {n for homes in _homes().values() for n in homes}
    assert list(_schema_names(yaml.safe_load(schema_text()), names)) == []
    filled = schema()["properties"]
    assert filled["personalization"]["default"] == {"method": "db-lora"}
    assert filled["encoders"]["default"] == {"clip": {"tiny": True}, "dino": {"tiny": True}}
    # the check sees a name where one hides
    assert list(_schema_names({"a": {"default": {"dino": {}}, "enum": ["x", "sdxl"]}}, {"dino", "sdxl"})) == [
        "a.default.dino",
        "a.enum.1 = sdxl",
    ]


def test_plugins_live_where_their_registry_says():
    homes = _homes()
    for what, folder in PLUGIN_PACKAGES.items():  # <folder>/<module>.py, or <folder>/<module>/ with its own code
        for name, path in homes[what].items():
            assert path.parent == folder or path.parent.parent == folder and path.name == "__init__.py", (what, name)
            if what in ("guidance", "personalization", "family"):  # the module is named after it
                assert name.replace("-", "_") in (path.stem, path.parent.name), (what, name)
    for folder in set(PLUGIN_PACKAGES.values()):  # found by discovery, not listed: no import of its own modules
        tree = ast.parse((folder / "__init__.py").read_text())
        own = ".".join(folder.relative_to(SRC).parts)
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "wig.plugins" in imported and not [m for m in imported if m.startswith(own)], folder
        assert "discover(__name__)" in ast.unparse(tree), folder


def test_the_name_check_sees_every_use_form(tmp_path):
    code = (
        'if m == "pg": make("db-lora")\nx = ("ag", 1)\nrun(method="cfgpp")\ny = d["none"]\n'
        'encoder_class("clip")\nMETRICS["dino"]\nMetric("clip_t", "CLIP-T")\nf(encoder="pickscore")\n'
        'p.add_argument("--text", help="a text to embed (dreamsim; repeat)")\nscore(metric="clip_i", kind="scene")\n'
        'if k in ("oracle_subject",): pass\nload(objective="oracle_text")\n'
    )
    names = {"pg", "db-lora", "ag", "cfgpp", "none", "clip", "dino", "clip_t", "pickscore", "dreamsim"}
    names |= {"clip_i", "scene", "oracle_subject", "oracle_text"}
    assert {v for v, _ in name_uses(ast.parse(code), names)} == names
    # and a help text's ordinary words are not names
    assert not list(name_uses(ast.parse('f(help="nothing given, none at all")'), {"given", "none"}))
    # through the file walk, with its line, in Python and in Snakemake files
    (tmp_path / "leak.py").write_text('x = 1\nif metric == "dreamsim":\n    pass\n')
    (tmp_path / "leak.smk").write_text('rule a:\n    params:\n        m="dreamsim",\n')
    fake = {"dreamsim": PACKAGE / "evaluation/plugins/dreamsim.py"}
    assert _named_outside(fake, [tmp_path / "leak.py", tmp_path / "leak.smk"]) == [
        "leak.py:2 dreamsim",
        "leak.smk:3 dreamsim",
    ]
    assert _named_outside(fake, [PACKAGE / "evaluation/plugins/dreamsim.py"]) == []
    # a family's name is looked for as any string constant: a default in a call is a use too
    (tmp_path / "default.py").write_text('family = root.get("family", "sdxl")\n')
    assert _named_outside({"sdxl": PACKAGE / "models/families/sdxl.py"}, [tmp_path / "default.py"], strict=True) == [
        "default.py:1 sdxl"
    ]


# --- floors --------------------------------------------------------------------------------

# Bottom first. A module may import its own floor or any below it, never one above: the ground
# floor is what everything uses; the model families; the concepts; the guidance methods; the
# personalization methods (training and attaching, which need the families); the sampler (which
# runs guidance over attached fine-tunes); the synthetic world (which samples); the metrics (which
# score the world with its oracle); the study, its search and job glue; the command line.
LAYERS = [
    (
        "ground",
        (
            "wig",
            "wig.errors",
            "wig.readers",
            "wig.kernels",
            "wig.settings",
            "wig.atomic",
            "wig.gpus",
            "wig.provenance",
            "wig.plugins",
            "wig.lazy",
            "wig.extras",
            "wig.weights",
            "wig.fetch",
            "wig.branches",
        ),
    ),
    ("models", ("wig.models",)),
    ("data", ("wig.concepts",)),
    ("guidance", ("wig.guidance",)),
    ("personalization", ("wig.personalization",)),
    ("sampling", ("wig.sampling",)),
    ("integrations", ("wig.integrations",)),  # wig's methods in other tools' extension points
    ("diagnostics", ("wig.diagnostics",)),  # probes that sample (attention collapse): above sampling
    ("synthetic", ("wig.synthetic",)),
    ("evaluation", ("wig.evaluation",)),
    ("user study", ("wig.user_study",)),  # sets, votes, Table 3, the web app: no torch
    ("workflow", ("wig.workflow",)),
    ("cli", ("wig.cli",)),
]


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def layer_of(module: str) -> int:
    """The floor of a module: the entry naming it or the longest package above it."""
    best = None
    for floor, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            exact = module == prefix
            inside = module.startswith(prefix + ".") and len(prefixes) == 1 and prefix != "wig"
            if exact or inside:
                best = floor
    if best is None:
        raise AssertionError(f"{module} is on no floor: add it to LAYERS")
    return best


def _graph() -> dict[str, frozenset[str]]:
    from wig.provenance import imports_of

    return {m: frozenset(i for i in imports_of(m) if i != m) for m in _modules()}


def upward_arrows(graph) -> list[str]:
    return sorted(
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {i} ({LAYERS[layer_of(i)][0]})"
        for m, imported in graph.items()
        for i in imported
        if layer_of(i) > layer_of(m)
    )


def circles(graph) -> list[list[str]]:
    """The import cycles between modules (Tarjan's strongly connected components of size > 1).
    An arrow from a module to a package above it is left out: every import of ``wig.a.b`` runs
    ``wig.a``'s ``__init__`` first, and an ``__init__`` that imports its own modules (the
    registries' one import line each) is the design, not a circle."""
    edges = {m: {i for i in imported if not m.startswith(i + ".")} for m, imported in graph.items()}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_module_is_on_a_floor_and_no_import_runs_up():
    graph = _graph()
    assert len(graph) > 60 and {layer_of(m) for m in graph} == set(range(len(LAYERS)))
    assert upward_arrows(graph) == []


def test_the_import_graph_has_no_circles():
    assert circles(_graph()) == []


def test_the_branch_weights_protocol_is_a_torch_free_leaf():
    graph = _graph()
    assert graph["wig.branches"] == frozenset()
    tree = ast.parse((PACKAGE / "branches.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(getattr(n, "module", None) in ("__future__", "typing") for n in top)


def test_the_checks_see_an_arrow_up_and_a_circle():
    graph = {"wig.errors": frozenset({"wig.workflow.study"}), "wig.workflow.study": frozenset({"wig.errors"})}
    assert upward_arrows(graph) == ["wig.errors (ground) imports wig.workflow.study (workflow)"]
    assert circles(graph) == [["wig.errors", "wig.workflow.study"]]
    # a package's __init__ importing its own modules is no circle; two of its modules importing each other are
    pkg = {"wig.guidance": frozenset({"wig.guidance.cfg"}), "wig.guidance.cfg": frozenset({"wig.guidance"})}
    assert circles(pkg) == []
    two = {"wig.guidance.cfg": frozenset({"wig.guidance.pg"}), "wig.guidance.pg": frozenset({"wig.guidance.cfg"})}
    assert circles(two) == [["wig.guidance.cfg", "wig.guidance.pg"]]
    with pytest.raises(AssertionError, match="on no floor"):
        layer_of("wig.nowhere")


def test_every_shipped_config_names_a_study_of_its_own():
    """Two shipped configs run in one checkout never share an output folder (results/<study>/): each
    names its study, and no two the same (the demo is `demo`, a preset its file's name)."""
    import yaml

    configs = [ROOT / "config/config.yaml", *sorted((ROOT / "config/presets").glob("*.yaml"))]
    configs += sorted((ROOT / ".test/config").glob("*.yaml"))
    names = {path.relative_to(ROOT).as_posix(): yaml.safe_load(path.read_text()).get("study") for path in configs}
    assert None not in names.values(), [p for p, n in names.items() if n is None]
    assert len(set(names.values())) == len(names), names
    for path, name in names.items():
        assert name == ("demo" if path == "config/config.yaml" else Path(path).stem), (path, name)
