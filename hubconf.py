"""torch.hub entry points: one per registered MobileNetV4 variant.

    model = torch.hub.load("<owner>/<repo>", "mobilenetv4_conv_small", pretrained=True)
    model = torch.hub.load("/path/to/checkout", "mobilenetv4_hybrid_medium", source="local", num_classes=10)

Each entry point is ``mnv4.create_model(<variant>, pretrained=..., **kwargs)``: ``pretrained=True`` loads the
variant's default tag from the Hugging Face hub (``safetensors`` and ``huggingface_hub`` must be installed, as for
the package itself); ``pretrained='path'`` loads a local file.
"""

import os
import sys

dependencies = ["torch", "torchvision"]

# A checkout (what torch.hub downloads) has the package under src/: import that one, not another installed copy.
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if os.path.isdir(os.path.join(_SRC, "mnv4")) and _SRC not in sys.path:
    sys.path.insert(0, _SRC)

import mnv4 as _mnv4  # noqa: E402


def _make_entrypoint(name):
    def entrypoint(pretrained=False, **kwargs):
        return _mnv4.create_model(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = (
        f"{name} ({_mnv4.MODEL_SPECS[name].description}). pretrained: False, True (its default tag from the "
        f"Hugging Face hub) or a weights path; other keyword arguments go to mnv4.create_model."
    )
    return entrypoint


# torch.hub looks entry points up as module attributes, so each variant becomes a real module-level function.
for _name in _mnv4.list_models():
    globals()[_name] = _make_entrypoint(_name)
del _name
