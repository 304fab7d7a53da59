"""Caption data: COCO-format splits, datasets and batching, converters, the synthetic shapes set."""
from captioning.data.coco import CocoCaptions, load_coco_captions
from captioning.data.collate import CaptionBatch, collate_captions
from captioning.data.convert import flickr8k_to_coco, karpathy_to_coco
from captioning.data.datasets import CaptionDataset, ImageDataset, load_image
from captioning.data.shapes import make_shapes_dataset, summary

__all__ = ["CocoCaptions", "load_coco_captions", "CaptionBatch", "collate_captions", "flickr8k_to_coco",
           "karpathy_to_coco", "CaptionDataset", "ImageDataset", "load_image", "make_shapes_dataset", "summary"]
