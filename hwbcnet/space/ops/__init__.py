"""Op rules: how each family of operations maps channel sources while a model is traced.

A rule is a function `rule(node, tracing)` registered for module types, functions or tensor-method names. It reads
the channel information of the node's inputs (`tracing.channels(arg)`), records what the node produces
(`tracing.set(node, ...)`), ties or pins channel sources, declares the channel-dependent shapes of the parameters it
owns (`tracing.param`, `tracing.module_spec`), the multiply-accumulates it costs (`tracing.macs`) and the category
the executed-layer pass groups it by (`tracing.category`). Adding an operator is one registered rule plus its tests,
in the spirit of Torch-Pruning's registry of pruning functions.
"""

from __future__ import annotations

from typing import Callable

from torch import fx, nn

Rule = Callable[[fx.Node, "object"], None]

_MODULE_RULES: list[tuple[type, Rule]] = []
_FUNCTION_RULES: dict[object, Rule] = {}
_METHOD_RULES: dict[str, Rule] = {}
_MODULE_NAME_RULES: dict[str, Rule] = {}  # by class name, for classes of packages hwbcnet does not import
_FUNCTION_NAME_RULES: dict[str, Rule] = {}  # by function name, for fx-wrapped functions of torchvision/timm


def module_rule(*types: type):
    """Register a rule for modules of these types (and their subclasses; the most recently registered match wins
    among unrelated types, the most specific class among related ones)."""

    def register(rule: Rule) -> Rule:
        for cls in types:
            _MODULE_RULES.append((cls, rule))
        return rule

    return register


def _keyed_registrar(table: dict):
    """A decorator factory: `@decorator(key, ...)` registers the rule under each key of `table`."""
    def decorator(*keys):
        def register(rule: Rule) -> Rule:
            for key in keys:
                table[key] = rule
            return rule

        return register

    return decorator


module_name_rule = _keyed_registrar(_MODULE_NAME_RULES)
function_name_rule = _keyed_registrar(_FUNCTION_NAME_RULES)
function_rule = _keyed_registrar(_FUNCTION_RULES)  # by the function object (torch.cat, operator.add)
method_rule = _keyed_registrar(_METHOD_RULES)  # by tensor method name (x.view, x.flatten)


def module_rule_for(module: nn.Module) -> Rule | None:
    """The rule of the closest registered class in the module's MRO."""
    for cls in type(module).__mro__:
        for registered, rule in reversed(_MODULE_RULES):
            if registered is cls:
                return rule
        if cls.__name__ in _MODULE_NAME_RULES:
            return _MODULE_NAME_RULES[cls.__name__]
    return None


def rule_for(node: fx.Node, modules: dict[str, nn.Module]) -> Rule | None:
    if node.op == "call_module":
        return module_rule_for(modules[node.target])
    if node.op == "call_function":
        rule = _FUNCTION_RULES.get(node.target)
        if rule is None and not getattr(node.target, "__module__", "torch").startswith("torch."):
            rule = _FUNCTION_NAME_RULES.get(getattr(node.target, "__name__", ""))
        return rule
    if node.op == "call_method":
        return _METHOD_RULES.get(node.target)
    return None


# The rule modules register themselves on import.
from hwbcnet.space.ops import convolution, elementwise, normalization, structure  # noqa: E402,F401
