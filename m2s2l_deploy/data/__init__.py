"""Dataset readers and frame decoding (layouts: docs/data.md)."""

from .readers import LAYOUTS, Dataset, Video, detect_layout, open_dataset
from .video import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    count_frames,
    iter_video,
    natural_key,
    read_image,
    read_video,
    video_info,
)

__all__ = [
    "IMAGE_EXTS",
    "LAYOUTS",
    "VIDEO_EXTS",
    "Dataset",
    "Video",
    "count_frames",
    "detect_layout",
    "iter_video",
    "natural_key",
    "open_dataset",
    "read_image",
    "read_video",
    "video_info",
]
