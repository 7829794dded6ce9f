"""GLVC demo (Gradio app and Hugging Face Space): upload a clip, pick a rate, get the decoded
video, its bitrate and quality scores, an x265 comparison at the same size, and the ``.glvc``
bitstream; a second tab decodes a shared ``.glvc`` file.

Layout only: the work (reading, limits, encoding, metrics, files) is in :mod:`glvc.service`.

Run: ``python app.py`` and open http://127.0.0.1:7860.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Iterator

from glvc.defaults import quiet_libraries

quiet_libraries()  # the libraries' start-up notices, as in the CLI: before they are imported

from glvc import service  # noqa: E402  (before gradio and torch: it imports `spaces` first)
from glvc import pictures  # noqa: E402

import gradio as gr  # noqa: E402


def without_tempfile_leak(component: gr.File) -> gr.File:
    """Make a ``gr.File(type="filepath")`` input pass the uploaded path on as it is.

    Gradio 6.31's ``File._process_single_file`` opens an empty ``NamedTemporaryFile(delete=False)``
    in its cache for every upload and never uses or removes it, so each decode request left a
    0-byte file behind (tests/test_concurrency.py). Patched on the instance: a ``gr.File``
    subclass would do the same, but gradio then serves it as a custom component, whose frontend
    fails to load in the browser, and writes an ``app.pyi`` beside this file.
    """
    from gradio.utils import NamedString
    from gradio_client import utils as client_utils

    original = component._process_single_file

    def process_single_file(f):
        if component.type != "filepath":
            return original(f)
        if component.file_types and not client_utils.is_valid_file(f.path, component.file_types):
            raise gr.Error(f"Invalid file type. Please upload a file that is one of these formats: {component.file_types}")
        return NamedString(f.path)

    component._process_single_file = process_single_file
    return component


def input_problem(block_fn, inputs: list[Any]) -> str | None:
    """One line that names the first input of a request gradio cannot read and says why, e.g.
    ``/encode: quality: expected a number, got 'high' (a str)``; None when each input reads alone.

    ``block_fn`` is gradio's event (``BlockFunction``: its ``inputs`` components, ``api_name``,
    ``input_parameter_names``), ``inputs`` the request's values in the same order."""
    from gradio.data_classes import FileData
    from gradio.exceptions import Error

    names = block_fn.input_parameter_names or []
    for index, (block, value) in enumerate(zip(block_fn.inputs, inputs)):
        if block.stateful or value is None:
            continue
        data_model = getattr(block, "data_model", None)
        try:
            if data_model is not None:
                data_model.model_validate(value, context={"validate_meta": True})
            else:
                block.preprocess(value)
        except Error as err:  # gradio's own words: a value outside a slider's range or a dropdown's choices
            problem = str(err.message)
        except Exception:  # noqa: BLE001 - any failure to read the value is the answer
            got = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            if isinstance(data_model, type) and issubclass(data_model, FileData):
                problem = f"expected a file, got {got} (a {type(value).__name__}): send handle_file(path) (from gradio_client import handle_file)"
            else:
                kind = block.api_info().get("type")
                expected = {"number": "a number", "boolean": "true or false", "string": "a string"}.get(kind, f"a {kind} value")
                problem = f"expected {expected}, got {got} (a {type(value).__name__})"
        else:
            continue
        name = names[index] if index < len(names) and names[index] else f"input {index + 1}"
        return f"/{block_fn.api_name}: {name}: {problem}"
    return None


def readable_input_errors(blocks: gr.Blocks) -> gr.Blocks:
    """Answer a request whose inputs cannot be read with a one-line ``gr.Error`` that names the input.

    Gradio 6.31 reads a request's inputs (``Blocks.preprocess_data``) before the handler runs. An
    input it could not read (a path string where a file is expected, as gradio_client sends it
    without ``handle_file``; a word where a number is) raised a pydantic ``ValidationError`` or a
    ``ComponentProcessingError``: the client got only "The upstream Gradio app has raised an
    exception but has not enabled verbose error reporting" and the server logged a traceback.
    Gradio's own refusals (a value outside a slider's range or a dropdown's choices) were readable
    but named no input, and were logged with a traceback too. Patched on the instance, as
    :func:`without_tempfile_leak` is.
    """
    from gradio.exceptions import ComponentProcessingError, Error
    from pydantic import ValidationError

    original = blocks.preprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call=False):
        try:
            return await original(block_fn, inputs, state, explicit_call)
        except (ValidationError, ComponentProcessingError, Error) as err:
            said = str(err.message) if isinstance(err, Error) else str(err).splitlines()[0]
            message = input_problem(block_fn, inputs) or f"/{block_fn.api_name}: {said}"
            raise gr.Error(message, print_exception=False) from None

    blocks.preprocess_data = preprocess_data
    return blocks


HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = [os.path.join(HERE, "examples", name) for name in ("bigbuckbunny_3s.mp4", "vtest_3s.mp4", "bikes_2s.mp4")]
LIMITS = service.limits()
DEVICE = "gpu" if service.has_gpu() else "cpu"
MAX_QUALITY = service.get_model(service.DEFAULT_MODEL_KEY).max_quality
# the tokenizer's CPU engine compiled while the page loads, not in the first request
threading.Thread(target=service.prepare_tokenizer, name="prepare-tokenizer", daemon=True).start()
DEFAULT_QUALITY = 32
RATE_MODES = [("Quality index", "quality"), ("Target bitrate (kbps)", "kbps"), ("Target file size (kB)", "kilobytes")]

INTRO = f"""
# GLVC: generative latent video compression

A causal video VAE turns the clip into latents (one latent frame per 4 video frames); a learned
latent codec with a temporal memory entropy-codes them into a `.glvc` bitstream. Upload a clip
(or pick an example), choose a rate, and compare the result with x265 at the same number of bytes.

**Limits.** {LIMITS.describe(DEVICE)} On 2 idle AMD EPYC CPU cores the default request (240p, 2 s,
with the x265 comparison) took 33.4 s at best of 3 runs, the decoded video showing after 21.2 s
(longer on a busy or slower machine); most of it is the tokenizer, then the metrics.
"""

SLOW_METRICS_LABEL = (
    "Score the slow metrics too: DISTS and ColorVideoVDP (perceptual video metric, JOD)"
    + ("" if DEVICE == "gpu" else ": on 2 CPU cores 80-90 s each per 2 s 240p clip, twice with x265")
)

EncodeOutputs = tuple[str, str, str, list[list[str]], list[list[str]], str, dict[str, Any], Any]
DecodeOutputs = tuple[str, str, dict[str, Any]]


def encode_video(
    video: str | None,
    model_key: str,
    rate_mode: str,
    quality: float,
    kbps: float,
    kilobytes: float,
    max_height: float,
    max_seconds: float,
    compare_x265: bool,
    slow_metrics: bool = False,
    progress: gr.Progress = gr.Progress(),
) -> Iterator[EncodeOutputs]:
    """Encode, decode and score one clip. A generator: the request's folder is removed once the
    outputs are served (gradio copies them into its cache before asking for the next item)."""
    rate = service.Rate(rate_mode, int(quality), kbps, kilobytes)
    with service.workspace() as workdir:
        steps = service.encode_clip_steps(video, model_key, rate, int(max_height), float(max_seconds), bool(compare_x265),
                                          workdir, progress, slow_metrics=bool(slow_metrics))
        try:
            preview = next(steps)
            # the decoded video and the .glvc file while the scores and x265 are computed; the rest is cleared
            yield preview.status, preview.decoded_mp4, None, [], [], preview.bitstream_path, {}, None
            out = next(steps)
        except service.UserError as err:
            raise gr.Error(str(err), print_exception=False) from None
        yield (out.status, out.decoded_mp4, out.side_by_side_mp4, out.table, out.timings, out.bitstream_path, out.details,
               out.inspection)


def show_pictures(ins: service.Inspection | None) -> tuple:
    """Every picture of a finished encode: the per-frame chart, the inspector and the bits map at
    the middle frame, and the RD sweep's time estimate."""
    if ins is None:
        return (None, gr.update(), None, None, "", gr.update(), None, "Encode a clip first.", gr.update(interactive=False))
    frame, latent = ins.num_frames // 2, ins.num_latents // 2
    glvc_pair, x265_pair, note = inspect_frame(ins, frame)
    return (
        pictures.per_frame_chart(ins),
        gr.update(maximum=ins.num_frames - 1, value=frame, interactive=ins.num_frames > 1),
        glvc_pair, x265_pair, note,
        gr.update(maximum=max(ins.num_latents - 1, 1), value=latent, interactive=ins.num_latents > 1),
        service.bits_picture(ins, latent),
        service.sweep_estimate(ins)[1],
        gr.update(interactive=True),
    )


def inspect_frame(ins: service.Inspection | None, index: float) -> tuple:
    if ins is None:
        return None, None, ""
    return (pictures.frame_pair(ins, int(index), "glvc"), pictures.frame_pair(ins, int(index), "x265"),
            pictures.frame_caption(ins, int(index)))


def show_bits(ins: service.Inspection | None, index: float):
    return None if ins is None else service.bits_picture(ins, int(index))


def run_sweep(ins: service.Inspection | None, progress: gr.Progress = gr.Progress()) -> tuple:
    if ins is None:
        raise gr.Error("Encode a clip first: the sweep re-codes its latents.", print_exception=False)
    sweep = service.rd_sweep(ins, progress)
    note = f"RD sweep done in {sweep.seconds:.0f} s (estimated {service.sweep_estimate(ins)[0]:.0f} s)."
    return note, pictures.rd_figure(sweep.points), sweep.table()


def decode_bitstream(glvc_file: str | None, model_key: str, progress: gr.Progress = gr.Progress()) -> Iterator[DecodeOutputs]:
    """Decode an uploaded .glvc file (same clean-up as :func:`encode_video`)."""
    with service.workspace() as workdir:
        try:
            out = service.decode_file(glvc_file, model_key, workdir, progress)
        except service.UserError as err:
            raise gr.Error(str(err), print_exception=False) from None
        yield out.status, out.decoded_mp4, out.details


def show_rate_inputs(rate_mode: str) -> tuple[dict, dict, dict]:
    return (
        gr.update(visible=rate_mode == "quality"),
        gr.update(visible=rate_mode == "kbps"),
        gr.update(visible=rate_mode == "kilobytes"),
    )


def quality_hint(model_key: str, quality: float) -> str:
    return service.quality_hint(model_key, int(quality))


def model_info(model_key: str, quality: float) -> tuple[str, str]:
    return service.model_status(model_key), service.quality_hint(model_key, int(quality))


with gr.Blocks(title="GLVC: generative latent video compression", delete_cache=(3600, 3600)) as demo:
    gr.Markdown(INTRO)
    with gr.Row():
        model = gr.Dropdown(
            [(choice.label, key) for key, choice in service.MODEL_CHOICES.items()],
            value=service.DEFAULT_MODEL_KEY, label="Model", scale=1,
        )
        model_note = gr.Markdown(service.model_status(service.DEFAULT_MODEL_KEY), label="Model status")

    with gr.Tab("Encode a clip"):
        with gr.Row():
            with gr.Column(scale=1):
                video_in = gr.Video(label="Clip", sources=["upload"], height=260, elem_id="clip")
                gr.Examples([[path] for path in EXAMPLES], inputs=[video_in], label="Example clips", cache_examples=False)
                rate_mode = gr.Radio(RATE_MODES, value="quality", label="Rate control")
                quality = gr.Slider(0, MAX_QUALITY, value=DEFAULT_QUALITY, step=1, label=f"Quality index (0 .. {MAX_QUALITY}, higher = more bytes)")
                kbps = gr.Number(value=60, minimum=1, label="Target bitrate (kbps); the encoder picks the quality index", visible=False)
                kilobytes = gr.Number(value=15, minimum=0.1, label="Target file size (kB = 1000 bytes); the encoder picks the quality index", visible=False)
                hint = gr.Markdown(service.quality_hint(service.DEFAULT_MODEL_KEY, DEFAULT_QUALITY), label="Quality hint")
                with gr.Row():
                    max_height = gr.Slider(LIMITS.min_height, LIMITS.max_height, value=LIMITS.default_height, step=8, label="Downscale to at most (px high)", elem_id="max-height")
                    max_seconds = gr.Slider(0.1, LIMITS.max_seconds, value=LIMITS.default_seconds, step=0.1, label="Code the first (seconds)", elem_id="max-seconds")
                compare = gr.Checkbox(value=True, label="Compare with x265 at the same size (low delay, preset medium)")
                slow_metrics = gr.Checkbox(value=service.slow_metrics_default(), label=SLOW_METRICS_LABEL, elem_id="slow-metrics")
                encode_button = gr.Button("Encode", variant="primary", elem_id="encode")
            with gr.Column(scale=2):
                status = gr.Markdown("Upload a clip or pick an example, then press **Encode**.", label="Status", elem_id="status")
                with gr.Row():
                    decoded_video = gr.Video(label="GLVC decoded", height=300, interactive=False, elem_id="decoded")
                    bitstream_file = gr.File(label=".glvc bitstream", interactive=False, height=100, elem_id="bitstream")
                side_by_side = gr.Video(label="Side by side: original | GLVC | x265 at the same size", height=300, interactive=False, elem_id="side-by-side")
                scores = gr.Dataframe(
                    headers=["measure", "GLVC", "x265 (same size)"], label="Rate and quality", interactive=False, wrap=True, elem_id="scores", column_widths=["46%", "27%", "27%"],
                )
                stages = gr.Dataframe(headers=["stage", "seconds"], label="Time per stage", interactive=False, elem_id="stages")
                with gr.Accordion("Details (JSON)", open=False):
                    details = gr.JSON(label="Details", show_label=False)

        inspection = gr.State(None, time_to_live=3600)  # the last encode's frames and latents (glvc.pictures.Inspection)
        gr.Markdown("## Pictures of this encode")
        per_frame = gr.Plot(label="Per frame: PSNR, and bytes per latent frame (GLVC and x265 at the same size)", format="png", elem_id="per-frame")
        gr.Markdown("### Frame inspector: original (left of the divider) against the decoded frame, at native size")
        frame_index = gr.Slider(0, 1, value=0, step=1, label="Frame", interactive=False, elem_id="frame-index")
        with gr.Row(elem_id="inspector"):
            inspect_glvc = gr.ImageSlider(label="original | GLVC", format="png", type="numpy", buttons=["fullscreen", "download"],
                                          interactive=False, max_height=720, elem_id="inspect-glvc")
            inspect_x265 = gr.ImageSlider(label="original | x265 (same size)", format="png", type="numpy", buttons=["fullscreen", "download"],
                                          interactive=False, max_height=720, elem_id="inspect-x265")
        frame_note = gr.Markdown(label="Frame caption", elem_id="frame-note")
        gr.Markdown(f"### Where the bits go\nLeft: the bits the entropy model gives each latent position of a latent frame "
                    f"(the latent y and its share of the hyper-latent), over the first frame it holds. Right: {pictures.LATENT_PROJECTION}.")
        latent_index = gr.Slider(0, 1, value=0, step=1, label="Latent frame", interactive=False, elem_id="latent-index")
        bits_plot = gr.Plot(label="Bits per latent position, and the latent", format="png", elem_id="bits-map")
        gr.Markdown("### RD sweep of this clip (opt-in: it codes the clip at 5 quality indices and x265 at each size)")
        sweep_note = gr.Markdown("Encode a clip first.", label="Sweep note", elem_id="sweep-note")
        sweep_button = gr.Button("Run the RD sweep", interactive=False, elem_id="sweep")
        rd_plot = gr.Plot(label="Bits per pixel against PSNR", format="png", elem_id="rd-plot")
        rd_table = gr.Dataframe(headers=["codec", "setting", "bytes", "bpp", "PSNR-RGB (dB)"], label="RD points", interactive=False, elem_id="rd-table")

    with gr.Tab("Decode a .glvc file"):
        gr.Markdown("Check a shared bitstream: it must come from the model selected above (the file names its model).")
        with gr.Row():
            with gr.Column(scale=1):
                glvc_in = without_tempfile_leak(gr.File(label=".glvc file", file_types=[".glvc"], type="filepath", elem_id="glvc-in"))
                decode_button = gr.Button("Decode", variant="primary", elem_id="decode")
            with gr.Column(scale=2):
                decode_status = gr.Markdown("Upload a .glvc file, then press **Decode**.", label="Status", elem_id="decode-status")
                decoded_only = gr.Video(label="Decoded", height=300, interactive=False, elem_id="decoded-only")
                with gr.Accordion("Details (JSON)", open=False):
                    decode_details = gr.JSON(label="Details", show_label=False)

    # The API (README, "From code"): /encode, /decode, /rd_sweep (after an /encode by the same client) and
    # /quality_hint. The other events only wire the page: callable, but left out of the API page.
    encode_button.click(
        encode_video,
        inputs=[video_in, model, rate_mode, quality, kbps, kilobytes, max_height, max_seconds, compare, slow_metrics],
        outputs=[status, decoded_video, side_by_side, scores, stages, bitstream_file, details, inspection],
        api_name="encode",
        concurrency_id="codec",
    ).then(
        show_pictures, inputs=inspection,
        outputs=[per_frame, frame_index, inspect_glvc, inspect_x265, frame_note, latent_index, bits_plot, sweep_note, sweep_button],
        api_name="pictures", api_visibility="undocumented", concurrency_id="pictures",
    )
    frame_index.change(inspect_frame, inputs=[inspection, frame_index], outputs=[inspect_glvc, inspect_x265, frame_note],
                       api_name="inspect_frame", api_visibility="undocumented", concurrency_id="pictures", show_progress="hidden")
    latent_index.change(show_bits, inputs=[inspection, latent_index], outputs=bits_plot, api_name="bits_map",
                        api_visibility="undocumented", concurrency_id="pictures", show_progress="hidden")
    sweep_button.click(run_sweep, inputs=inspection, outputs=[sweep_note, rd_plot, rd_table], api_name="rd_sweep",
                       concurrency_id="codec")
    decode_button.click(
        decode_bitstream, inputs=[glvc_in, model], outputs=[decode_status, decoded_only, decode_details],
        api_name="decode", concurrency_id="codec",
    )
    rate_mode.change(show_rate_inputs, inputs=rate_mode, outputs=[quality, kbps, kilobytes], api_name="rate_mode", api_visibility="undocumented",
                     queue=False, show_progress="hidden")
    quality.change(quality_hint, inputs=[model, quality], outputs=hint, api_name="quality_hint", queue=False, show_progress="hidden")
    model.change(model_info, inputs=[model, quality], outputs=[model_note, hint], api_name="model_info", api_visibility="undocumented",
                 concurrency_id="models")

readable_input_errors(demo)
demo.queue(default_concurrency_limit=1, max_size=16)

if __name__ == "__main__":
    import faulthandler
    import signal

    # `kill -USR1 <pid>` prints every thread's stack to stderr: for a server that stops answering
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # show_error: an unexpected failure's message reaches the page and the API client (the
    # server still logs its traceback), instead of gradio's "has not enabled verbose error reporting"
    demo.launch(max_file_size=f"{LIMITS.max_upload_bytes // service.MB}mb", show_error=True)
