"""What recovery (``taskprune recover``) is made of: the training data and batch order (:mod:`.data`), one loss
per recipe (:mod:`.losses`; the registry is :data:`taskprune.recipes.RECIPES`) and the LoRA adapters and
training loop (:mod:`.lora`).

Imported by the ``recover`` stage and its tests only; imports :mod:`taskprune.model`, never a stage module.
"""
