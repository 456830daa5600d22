"""How this folder was made, with the model code of commit a0f4e3b (see README.md)."""

from pathlib import Path

import numpy as np
import torch

from specad.config import Config
from specad.data import Preprocess
from specad.infer import Detector, ModelMeta
from specad.io import Cube
from specad.models.efficientad import PDN, EfficientAD

out = Path(__file__).parent
torch.manual_seed(0)
model = EfficientAD(2, 64, PDN(2, 384, "small", False), "small", False)
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for p in model.parameters():
        if p.numel() > 100_000:  # the wide convolutions: sparse, so the file compresses
            p.mul_((torch.rand(p.shape, generator=g) < 0.02) * 7.0)
x = torch.rand(4, 2, 64, 64, generator=g)
model.fit_teacher_stats([x])
model.fit_quantiles([x])
cfg = Config.model_validate({"data": {"root": "none", "image_size": 64}})
pre = Preprocess(2, [0, 1], 64, [0.5, 0.5], [0.2, 0.3])
meta = ModelMeta("efficientad", pre, 0.5, ["a", "b"], None, None, cfg.model_dump(mode="json"))
Detector(model.eval(), meta, "cpu").save(out / "model.safetensors")
cube = np.random.default_rng(2).random((80, 72, 2)).astype(np.float32)
np.save(out / "cube.npy", cube)
det = Detector.load(out, device="cpu", runtime="torch")
np.save(out / "expected_map.npy", det.predict(Cube(cube)).anomaly_map)
