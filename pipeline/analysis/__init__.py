"""Log analysis on polars: load a run's JSON lines, summarize, calibrate a profile."""
from pipeline.analysis.calibrate import calibrate, calibrate_rounds
from pipeline.analysis.frames import RunFrames, load_run, rounds_frame
from pipeline.analysis.report import analyze_frames, analyze_run, render, summarize_rounds

__all__ = ["RunFrames", "load_run", "rounds_frame", "analyze_run", "analyze_frames", "render", "summarize_rounds",
           "calibrate", "calibrate_rounds"]
