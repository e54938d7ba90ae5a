"""liger: linearize pretrained Transformer LLMs into gated linear-recurrent models.

    import liger
    model = liger.linearize(model)                 # in place; same parameters
    model.save_pretrained("out")                   # atomic; config.json records the linearization
    model = liger.from_pretrained("out")
    model = transformers.AutoModelForCausalLM.from_pretrained("out")   # the same: `import liger` registers
                                                                       # the "liger" model type (liger.hf_auto)
"""

from .cache import LigerCache, cache_nbytes
from .checkpoint import from_pretrained
from .config import LigerConfig
from .errors import CheckpointError, ConfigError, DataError, LigerError, UnsupportedModelError
from .hf_auto import LigerForCausalLM
from .hf_config import LigerModelConfig
from .surgery import linearize
from .teacher import load_teacher

__version__ = "0.1.0"

__all__ = [
    "LigerConfig",
    "linearize",
    "from_pretrained",
    "load_teacher",
    "LigerModelConfig",
    "LigerForCausalLM",
    "LigerCache",
    "cache_nbytes",
    "LigerError",
    "UnsupportedModelError",
    "ConfigError",
    "CheckpointError",
    "DataError",
]
