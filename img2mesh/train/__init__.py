"""Fine-tuning Zero123++ on your own meshes: training pairs (:mod:`.data`), the trainer (:mod:`.trainer`) and LoRA
adapters (:mod:`.lora`), configured by :mod:`.config`. Needs the ``train`` extra (peft) for LoRA."""
