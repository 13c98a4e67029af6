"""The synthetic world: its images and captions (`world`), the pretraining of its base model
(`pretrain`), the oracle that scores its images from pixels (`oracle`) and the base's accuracy
(`base_accuracy`)."""
