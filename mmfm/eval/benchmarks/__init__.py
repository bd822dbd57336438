"""Benchmark formats other tools publish, evaluated with mmfm's zero-shot and retrieval code.

* ``sources``: CLIP_benchmark's WebDataset benchmark folders (``classnames.txt``,
  ``zeroshot_classification_templates.txt``, ``test/nshards.txt``, ``test/N.tar``), local or through fsspec,
  and torchvision datasets already on disk (``torchvision:CIFAR10:ROOT``);
* ``clip_benchmark``: evaluate one of them, a suite file of them, and write CLIP_benchmark's CSV;
* ``compositionality``: SugarCrepe and ARO (VG-Relation, VG-Attribution, COCO/Flickr order).
"""
