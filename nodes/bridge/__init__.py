"""Everything at the boundary between the nodes and ComfyUI, one concern per module; node modules use it as
`from . import bridge` and `bridge.X`.

Only `host` imports ComfyUI (`comfy.*`, `folder_paths`, `latent_preview`, ...); the other modules take those names
from it. Outside ComfyUI (tests, scripts) the same functions run on the CPU with plain torch: model files are given as
paths, progress is a no-op unless asked for, and a cancel request is a flag set by `request_interrupt()`.

- `host`: whether the pack runs inside ComfyUI, and the ComfyUI modules it uses.
- `folders`: model folders (`models/omnigen2`, `models/vlm` and ComfyUI's standard folders) and tokenizers.
- `devices`: ComfyUI's load, offload and output devices; the loader's weight dtypes.
- `layers`: ComfyUI's layer classes (`comfy.ops`) for the three models, so ModelPatcher can load them partially.
- `model`: the model handle, its part in ComfyUI's memory management, LoRAs as ModelPatcher patches.
- `inputs`: IMAGE and MASK rows; the widgets as the engine's sampling options.
- `progress`: progress bar, previews, text on the node, cancel.
- `outputs`: IMAGE and raw-VAE LATENT outputs, run statistics for the front-end.
"""

from __future__ import annotations

from .devices import WEIGHT_DTYPES
from .folders import (
    BUNDLED_LORA_CHOICE, BUNDLED_MODEL_CHOICE, JUDGE_DIRS_ENV, JUDGE_FOLDER_KEY, MODEL_DIRS_ENV, TEXT_ENCODER_FOLDER_KEY,
    TRANSFORMER_FOLDER_KEY, VAE_FOLDER_KEY, list_files, list_judge_folders, list_loras, list_model_folders,
    list_tokenizers, register_folders, resolve_file, resolve_judge_folder, resolve_lora, resolve_model_folder,
    resolve_tokenizer,
)
from .inputs import INDEPENDENT_CONDITION, collect_images, sampling_options, single_image, single_mask
from .model import PARTS, OmniGen2Model, check_model, load_model, model_with_lora, part_module
from .outputs import sampler_ui, to_comfy_image, to_comfy_latent
from .progress import Interrupted, progress_callback, request_interrupt, round_progress

# Socket types the pack adds to ComfyUI's graph; the core ones (IMAGE, LATENT, INT, ...) are ComfyUI's.
MODEL_TYPE = "OMNIGEN2_MODEL"
CONDITION_TYPE = "OMNIGEN2_CONDITION"
CATEGORY = "OmniGen2"
