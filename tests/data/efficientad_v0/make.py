"""Made with specad at commit before issue 13's model rewrite: a sparse 2-channel EfficientAD."""
import json, numpy as np, torch
from pathlib import Path
from specad.config import Config
from specad.data import Preprocess
from specad.infer import Detector, ModelMeta
from specad.models.efficientad import EfficientAD, PDN

out = Path("tests/data/efficientad_v0")
torch.manual_seed(0)
teacher = PDN(2, 384, "small", False)
model = EfficientAD(2, 64, teacher, "small", False)
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for name, p in model.named_parameters():
        if p.numel() > 100_000:  # the wide convolutions: sparse, so the file compresses
            keep = torch.rand(p.shape, generator=g) < 0.02
            p.mul_(keep * 7.0)
x = torch.rand(4, 2, 64, 64, generator=g)
model.fit_teacher_stats([x])
model.fit_quantiles([x])
cfg = Config.model_validate({"data": {"root": "none", "image_size": 64}, "model": {"teacher": "pdn-random"}})
meta = ModelMeta("efficientad", Preprocess(2, [0, 1], 64, [0.5, 0.5], [0.2, 0.3]), 0.5, ["a", "b"], None, None, cfg.model_dump(mode="json"))
Detector(model.eval(), meta, "cpu").save(out / "model.safetensors")
cube = np.random.default_rng(2).random((80, 72, 2)).astype(np.float32)
np.save(out / "cube.npy", cube)
from specad.io import Cube
det = Detector.load(out, device="cpu", runtime="torch")
pred = det.predict(Cube(cube))
np.save(out / "expected_map.npy", pred.anomaly_map)
print(pred.score, pred.anomaly_map.std(), model.q_st_a, model.q_st_b, model.q_ae_a, model.q_ae_b)
