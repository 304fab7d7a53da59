"""Where the Hydra configs live, and the structured-config schemas their groups extend.

In a source checkout (and an editable install) the configs are the repository's top-level conf/;
a built wheel carries the same files as captioning/conf (setup.cfg maps one onto the other).
`conf/decoder/`, `conf/decode/`, `conf/trainer/` and `conf/scst/` extend the dataclasses of captioning/config.py,
`conf/encoder/` and `conf/optim/` those of captioning/run_config.py (`defaults: [schema]`), as `dataset.augment`
does (`augment: schema` in shapes.yaml's and coco.yaml's defaults), so the API's defaults are the configs'
defaults and Hydra type-checks overrides.
"""
from pathlib import Path

from hydra.core.config_store import ConfigStore

from captioning.config import AugmentOptions, DecodeOptions, DecoderOptions, SCSTOptions, TrainerOptions
from captioning.run_config import EncoderOptions, OptimOptions

_PACKAGED = Path(__file__).resolve().parents[1] / "conf"  # captioning/conf inside an installed wheel
_SOURCE = Path(__file__).resolve().parents[2] / "conf"    # the repository's conf/
CONF_DIR = str(_PACKAGED if _PACKAGED.is_dir() else _SOURCE)

ConfigStore.instance().store(group="decoder", name="schema", node=DecoderOptions)
ConfigStore.instance().store(group="decode", name="schema", node=DecodeOptions)
ConfigStore.instance().store(group="trainer", name="schema", node=TrainerOptions)
ConfigStore.instance().store(group="scst", name="schema", node=SCSTOptions)
ConfigStore.instance().store(group="dataset/augment", name="schema", node=AugmentOptions)
ConfigStore.instance().store(group="encoder", name="schema", node=EncoderOptions)
ConfigStore.instance().store(group="optim", name="schema", node=OptimOptions)
