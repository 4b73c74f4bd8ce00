"""docs/architecture.md against the code: the layers of tfmeta import each other in one
direction only (function-level imports included), and so do its modules, one by one, inside
every folder (so no import inside a function holds a circle apart); no class
is built at run time with `type(name, bases, namespace)`; the hook tables (learners and
their recipes) say which classes override each hook; and no learner carries its recipe's
run policy."""

import ast
import importlib
import inspect
import os
import pkgutil
import re

from tfmeta.algorithms import ALGORITHMS, REGRESSION_RECIPES, base, episodic, recipe, recipe_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "tfmeta")


def layer_of(module: str):
    """`tfmeta.algorithms.maml` -> "algorithms"; `tfmeta.ranges` -> "ranges"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "tfmeta" else None


def layer_imports() -> dict:
    """layer -> {layer it imports: "module line N" where it does}: `module_imports` seen
    from above (`tfmeta.configs` is the configs/ folder, installed inside the package)."""
    graph = {}
    for module, targets in module_imports().items():
        source = layer_of(module)
        for target, where in targets.items():
            layer = layer_of(target)
            if layer and source and layer != source and layer != "configs":
                graph.setdefault(source, {}).setdefault(layer, f"{module} {where}")
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph.get(node, {}):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_layers_import_each_other_one_way():
    graph = layer_imports()
    cycle = find_cycle(graph)
    where = [f"{a} -> {b} (in {graph[a][b]})" for a, b in zip(cycle, cycle[1:])] if cycle \
        else []
    assert cycle is None, "layers import in a circle: " + "; ".join(where)
    # Nothing below the learners imports them, and the learners do not import the trainer
    # or the config (which imports the learners to check a config).
    assert not {"training", "config", "commands"} & set(graph["algorithms"])
    assert not {"algorithms", "training", "config"} & set(graph["data"])
    assert "algorithms" not in graph.get("models", {})


def test_a_cycle_is_found():  # the check above can fail
    assert find_cycle({"a": {"b": "x"}, "b": {"a": "y"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b": "x"}, "b": {}}) is None


def module_of(target: str, modules: set):
    """The module an import of `target` runs: itself, or the package it names."""
    while target not in modules and "." in target:
        target = target.rsplit(".", 1)[0]
    return target if target in modules else None


def module_imports() -> dict:
    """module -> {tfmeta module it imports -> "line N"}, over every module of tfmeta/, at the
    top or inside a function. `from tfmeta.data import images` imports the module
    `tfmeta.data.images` (and the package runs first, which imports its own, not this one's);
    `from tfmeta.data import load_dataset` imports the package `tfmeta.data`."""
    paths = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                paths[os.path.relpath(path[:-3], ROOT).replace(os.sep, ".").removesuffix(
                    ".__init__")] = path
    modules = set(paths)
    graph = {}
    for module, path in sorted(paths.items()):
        package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base_name = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base_name = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base_name}.{a.name}" if f"{base_name}.{a.name}" in modules
                           else base_name for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                found = module_of(target, modules) if target.startswith("tfmeta") else None
                if found and found != module:
                    graph.setdefault(module, {}).setdefault(found, f"line {node.lineno}")
    return graph


def test_no_module_imports_itself_through_others():
    """No circle among tfmeta's modules, inside a folder included (tfmeta/data/ was one
    knot of seven modules, held apart by imports inside functions; MAML once imported
    maml_regression inside a function, maml_regression importing MAML): imports inside
    functions count, so none of them can be what keeps a circle from failing at import."""
    graph = module_imports()
    assert {"tfmeta.data.episodes", "tfmeta.data.classes"} <= set(graph)
    cycle = find_cycle(graph)
    where = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])] if cycle else []
    assert cycle is None, "modules import in a circle: " + "; ".join(where)


def test_the_data_layers_import_downward():
    """tfmeta/data/'s layers (its `__init__` docstring): the class store and the episode
    shape at the bottom import no other module of the package; the samplers read a store
    only through `tfmeta.data.classes` (no loader, no records); nothing below the pipeline
    imports it."""
    graph = module_imports()

    def data_imports(name):
        return {m for m in graph.get(f"tfmeta.data.{name}", {}) if m.startswith("tfmeta.data")}

    assert data_imports("classes") == set() and data_imports("shape") == set()
    for sampler in ("fixed_sampling", "variable_sampling", "sampling"):
        assert data_imports(sampler) <= {"tfmeta.data.classes", "tfmeta.data.shape",
                                         "tfmeta.data.fixed_sampling",
                                         "tfmeta.data.variable_sampling"}, sampler
    assert data_imports("record_format") == set()
    for name in ("record_writer", "record_store"):
        assert "tfmeta.data.record_stream" not in data_imports(name)
        assert "tfmeta.data.episodes" not in data_imports(name)
    assert "tfmeta.data.record_store" not in data_imports("record_writer")
    assert "tfmeta.data.record_writer" not in data_imports("record_store")
    importers = {m for m, targets in graph.items() if "tfmeta.data.episodes" in targets
                 and m.startswith("tfmeta.data.")}
    assert importers <= {"tfmeta.data"}, importers  # only the package's public names


def test_an_import_inside_a_function_counts():  # the module graph sees what the test needs
    graph = module_imports()
    assert "tfmeta.algorithms" in graph["tfmeta.config"]  # imported inside functions only
    assert "tfmeta.data.images" in graph["tfmeta.data.own_data"]  # `from pkg import module`


def is_class_factory(node) -> bool:
    """Whether `node` is a call `type(name, bases, namespace)`: a class made at run time."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "type" and len(node.args) == 3)


def test_no_class_is_built_at_run_time():
    """A class is written where a reader finds it by its name, never made by `type(...)`."""
    built = []
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                built += [f"{os.path.relpath(path, ROOT)}:{node.lineno}" for node in
                          ast.walk(ast.parse(open(path, encoding="utf-8").read()))
                          if is_class_factory(node)]
    assert not built, f"classes built with type(name, bases, namespace): {built}"


def test_a_class_factory_is_found():  # the check above can fail
    def call(source):
        return ast.parse(source).body[0].value

    assert is_class_factory(call('type("MetaSGDRegression", (MAMLRegression, MetaSGD), {})'))
    assert not is_class_factory(call("type(learner)"))
    assert not is_class_factory(call("type(config.model)({'name': 'mlp'})"))


def learner_classes(root=base.MetaLearner) -> dict:
    """Every subclass of `root` (MetaLearner, or Recipe) defined in tfmeta.algorithms, by
    class name."""
    import tfmeta.algorithms as algorithms

    found = {}
    for info in pkgutil.iter_modules(algorithms.__path__):
        module = importlib.import_module(f"tfmeta.algorithms.{info.name}")
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, root) and \
                    value is not root and value.__module__ == module.__name__:
                found[name] = value
    return found


def hook_tables() -> dict:
    """base class name -> {hook -> the class names its "overridden by" cell lists}, one
    table per `### `Base`` subsection of docs/architecture.md's hook section."""
    text = open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8").read()
    section = text.split("## The learner: hooks with defaults", 1)[1].split("\n## ", 1)[0]
    tables, rows = {}, None
    for line in section.splitlines():
        heading = re.match(r"### `(\w+)`", line)
        if heading:
            rows = tables.setdefault(heading.group(1), {})
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`(\w+)(\(.*\))?`", cells[0]) if len(cells) == 3 else None
        if match and rows is not None:
            listed = re.sub(r"\([^)]*\)", "", cells[2])  # notes in parentheses
            rows[match.group(1)] = {n.strip() for n in listed.split(",") if n.strip()}
    return tables


def test_the_hook_tables_name_the_classes_that_override_each_hook():
    tables = hook_tables()
    classes = {**learner_classes(), **learner_classes(recipe.Recipe)}
    bases = {"MetaLearner": base.MetaLearner, "EpisodicClassifier": episodic.EpisodicClassifier,
             "Recipe": recipe.Recipe}
    assert set(tables) == set(bases)
    assert len(tables["MetaLearner"]) >= 15 and len(tables["EpisodicClassifier"]) >= 5
    assert len(tables["Recipe"]) >= 9
    for name, rows in tables.items():
        for hook, listed in rows.items():
            assert hook in vars(bases[name]), f"{hook} is not a hook {name} defines"
            overriding = {n for n, cls in classes.items()
                          if cls is not bases[name] and hook in vars(cls)}
            assert listed == overriding, (
                f"docs/architecture.md says {name}.{hook} is overridden by {sorted(listed)}; "
                f"the code by {sorted(overriding)}")


# What a learner's recipe holds and its Keras model does not (`build` is also Keras's own
# `Model.build`, and `from_experiment` was the learner's constructor from a config).
RUN_POLICY = {name for name in vars(recipe.Recipe) if not name.startswith("_")
              and name not in ("build", "name")} | {"from_experiment"}


def test_the_learners_hold_the_method_and_their_recipes_the_run_policy():
    """Issue 35, item 5: construction and run policy (XLA, CPU threads, batch-size field,
    input kinds, fixed arguments, fewest ways, building from a config) are each learner's
    recipe, not members of its Keras model; every registered name resolves to a recipe of a
    learner, and every learner class that trains under a name has one."""
    assert {"xla_auto", "cpu_threads_auto", "batch_size_field", "input_kinds", "min_ways",
            "fixed_arguments", "arguments_from_data", "check_input_kind"} <= RUN_POLICY
    for name, cls in {"MetaLearner": base.MetaLearner, **learner_classes()}.items():
        assert not RUN_POLICY & set(dir(cls)), (name, sorted(RUN_POLICY & set(dir(cls))))
    registered = [recipe_of(a) for a in ALGORITHMS] + \
        [recipe_of(a, "regression") for a in REGRESSION_RECIPES]
    for each in registered:
        assert isinstance(each, recipe.Recipe) and issubclass(each.learner, base.MetaLearner)
    concrete = {c for c in learner_classes().values() if not inspect.isabstract(c)}
    assert {each.learner for each in registered} <= concrete
    assert len({each.learner for each in registered}) == len(ALGORITHMS) + len(REGRESSION_RECIPES)


def test_a_learner_with_run_policy_is_found():  # the check above can fail
    class Stray(base.MetaLearner):
        xla_auto = False

    assert RUN_POLICY & set(dir(Stray)) == {"xla_auto"}


def test_only_classifiers_have_classifier_hooks():
    """The split: a learner that is not an EpisodicClassifier (Reptile-GAN, MAML-RL) has
    none of its hooks, and so nothing to disable with an error."""
    classifier_hooks = set(vars(episodic.EpisodicClassifier)) - set(dir(base.MetaLearner))
    assert {"query_logits", "adapt_and_predict", "max_ways"} <= classifier_hooks
    others = {n: c for n, c in learner_classes().items()
              if not issubclass(c, episodic.EpisodicClassifier)}
    assert {"ReptileGAN", "MAMLRL", "ReptileFamily"} <= set(others)
    for name, cls in others.items():
        assert not {h for h in classifier_hooks if hasattr(cls, h)}, name


def test_the_module_list_names_every_module_and_package():
    """docs/architecture.md's `## Modules` list names each module and package of tfmeta/
    (it had drifted: five were missing), and nothing that is not there; the entries of
    training/ and data/ name each of their modules."""
    text = open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8").read()
    block = text.split("## Modules", 1)[1].split("```", 2)[1]
    listed = set(re.findall(r"^  (\w+(?:\.py|/))", block, re.MULTILINE))
    present = {name + ("/" if os.path.isdir(os.path.join(PACKAGE, name)) else "")
               for name in os.listdir(PACKAGE)
               if (name.endswith(".py") and name != "__init__.py") or (
                   os.path.isfile(os.path.join(PACKAGE, name, "__init__.py")))}
    assert listed == present, (sorted(present - listed), sorted(listed - present))
    for package in ("training", "data"):
        entry = re.split(r"\n  \w", block.split(f"  {package}/", 1)[1], maxsplit=1)[0]
        for name in os.listdir(os.path.join(PACKAGE, package)):
            if name.endswith(".py") and name != "__init__.py":
                assert name in entry, f"{package}/{name} is not in the module list"
