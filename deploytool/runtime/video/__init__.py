"""Whole videos through an export: frames decoded with their own colour, tiled through the same
tiler as images (batches filled across consecutive frames), encoded with every timestamp, tag and
other stream of the source kept. Imports neither torch nor onnx: any runner `run` uses will do.
"""

from deploytool.runtime.video.output import EncodeOptions
from deploytool.runtime.video.pipeline import FrameRestorer, TiledRestorer, restore_video, sigterm_interrupts
from deploytool.runtime.video.probe import VideoInfo, check_video, is_video, probe

__all__ = [
    "EncodeOptions",
    "FrameRestorer",
    "TiledRestorer",
    "VideoInfo",
    "check_video",
    "is_video",
    "probe",
    "restore_video",
    "sigterm_interrupts",
    "list_media",
    "split_inputs",
    "summary_line",
]


def list_media(directory) -> tuple[list, list]:
    """(images, videos) in a folder, sorted: a file is a video when probing finds one, an image
    when its extension names an image format; other files are left out."""
    from pathlib import Path

    from deploytool.errors import ImageError
    from deploytool.runtime.input_batches import IMAGE_SUFFIXES

    directory = Path(directory)
    if not directory.is_dir():
        raise ImageError(f"folder not found: {directory}")
    found_images, found_videos = [], []
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        if is_video(path):
            found_videos.append(path)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            found_images.append(path)
    if not found_images and not found_videos:
        raise ImageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) or videos in {directory}")
    return found_images, found_videos


def split_inputs(inputs) -> tuple[list, list]:
    """(image files, video files) of command-line inputs: files and folders, in the order given."""
    from pathlib import Path

    from deploytool.runtime.input_batches import IMAGE_SUFFIXES

    found_images, found_videos = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            folder_images, folder_videos = list_media(item)
            found_images += folder_images
            found_videos += folder_videos
        elif is_video(item) or (item.is_file() and item.suffix.lower() not in IMAGE_SUFFIXES):
            # a named file that is neither is probed as a video, to say what it lacks
            found_videos.append(item)
        else:
            found_images.append(item)
    return found_images, found_videos


def summary_line(summary: dict) -> str:
    """One line for a restored video, for people."""
    width, height = summary["output_size"]
    share = summary["model_busy_share"]
    copied = len(summary["streams_copied"])
    busy = f", model busy {share:.0%}" if share is not None else ""
    return f"{summary['input']} -> {summary['output']} ({width}x{height}, {summary['frames']} frames, {summary['fps']} fps{busy}, {copied} streams copied)"
