"""Training the SNNL autoencoder (the third step of the data flow).

- ``config``: ``TrainConfig``, the paper's presets and the label-free ones: the one source of training defaults;
- ``loop``: ``train_autoencoder`` (reconstruction + alpha * SNNL, checkpoints, resume, DDP);
- ``temperature``: the fixed and annealed temperature schedules;
- ``positives`` and ``augment``: who counts as the same without labels (views, nearest neighbours);
- ``checkpoints``: checkpoint files that survive a crash and prove their integrity.

The modules are imported one by one (``snnl.train.loop``), never through this
package, so that reading a configuration does not import torch.
"""
