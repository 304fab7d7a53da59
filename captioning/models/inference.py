"""An encoder rewritten for fast inference: the same function, fewer passes over the activations.

Each rewrite replaces layers with an equivalent cheaper one in a copy of the model (a torch.fx
trace shares the original's layers until it replaces them), and the outputs stay equal up to float
rounding (tests/test_precision.py). `captioning.data.features` runs the CNN through `inference_copy`.
"""
from __future__ import annotations

import copy

from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


class _ConvLeafTracer(fx.Tracer):
    """Keeps every Conv2d subclass (e.g. EfficientNet's same-padding conv) a single graph node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.Conv2d) or super().is_leaf_module(m, qualname)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An inference copy of `module` with each eval-mode BatchNorm folded into the conv before it.

    BN(conv(x)) = gamma * (W x + b - mu) / sqrt(var + eps) + beta is itself a convolution, with
    W' = W * s and b' = (b - mu) * s + beta, s = gamma / sqrt(var + eps): one pass over the
    activations instead of two. A model that torch.fx cannot trace is returned unchanged.
    """
    try:
        graph = _ConvLeafTracer().trace(module)
    except Exception:  # noqa: BLE001 - data-dependent control flow etc.: run the model as it is
        return module
    folded = fx.GraphModule(module, graph)  # shares the original's submodules until replaced below
    modules = dict(folded.named_modules())
    for node in list(graph.nodes):
        conv = node.args[0] if node.op == "call_module" and node.args else None
        if isinstance(modules[node.target] if node.op == "call_module" else None, nn.BatchNorm2d) and \
                isinstance(conv, fx.Node) and conv.op == "call_module" and len(conv.users) == 1 and \
                isinstance(modules[conv.target], nn.Conv2d):
            parent, _, name = conv.target.rpartition(".")
            setattr(folded.get_submodule(parent), name, fuse_conv_bn_eval(modules[conv.target], modules[node.target]))
            node.replace_all_uses_with(conv)
            graph.erase_node(node)
    folded.delete_all_unused_submodules()
    folded.recompile()
    return folded


def fold_static_padding(module: nn.Module) -> nn.Module:
    """Replace each TensorFlow-"same" convolution whose padding is symmetric with a plain one.

    EfficientNet ports (lukemelas-style `Conv2dStaticSamePadding`) pad with a ZeroPad2d child and
    then convolve unpadded: a fill and a copy of the whole input per layer. A convolution pads
    inside its kernel for free, but only symmetrically; the asymmetric pads of stride-2 layers stay.
    Works in place: give it a copy (`inference_copy` does).
    """
    for name, conv in list(module.named_modules()):
        pad = getattr(conv, "static_padding", None)
        if not isinstance(conv, nn.Conv2d) or not isinstance(pad, nn.ZeroPad2d):
            continue
        left, right, top, bottom = pad.padding
        if left != right or top != bottom or conv.padding != (0, 0):
            continue
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, (top, left),
                          conv.dilation, conv.groups, bias=conv.bias is not None)
        plain.weight, plain.bias = conv.weight, conv.bias
        parent, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent), attr, plain)
    return module


def inference_copy(module: nn.Module) -> nn.Module:
    """A copy of eval-mode `module` for inference: batch-norm, then padding, folded into the convs."""
    folded = fold_batchnorm(module)
    return fold_static_padding(copy.deepcopy(module) if folded is module else folded)
