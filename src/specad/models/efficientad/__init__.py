"""EfficientAD (Batzner et al. 2023) for N-channel cubes, all in this package.

- ``network``: the teacher-student-autoencoder network, layer by layer;
- ``teachers``: its PDN teachers (random, the shipped distilled one in ``weights/``, a file);
  the EfficientNet-Lite0 teacher is `specad.models.backbones`'s, shared with knn;
- ``build``: a network from the config's model section;
- ``config``: the training config, and ``cpu.yaml``, the CPU preset;
- ``penalty``: the natural-image penalty set, made N-channel on the fly;
- ``train_loop``: the seeded, resumable training loop; ``ddp``: its ``torchrun`` parts;
  ``checkpoint``: resumable state on disk;
- ``detector``: EfficientAD on the detector contract (`specad.models.base`);
- ``run``: the run folder of ``specad train`` (`specad.fit.train` completes it);
- ``distill``: distilling a PDN teacher (``specad teacher distill``).
"""
