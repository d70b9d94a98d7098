"""unCLIP decoder: a tiny random-weight StableUnCLIPImg2ImgPipeline built in code (no
downloads), driven end to end with a tiny open_clip encoder through the real steps."""

from __future__ import annotations

import json
import time

import numpy as np
import open_clip
import pytest
import torch

from dpsynth import steps
from dpsynth.config import load_config
from dpsynth.decoders import DecoderLoadError, UnclipDecoder, get_decoder
from dpsynth.decoders.base import DECODERS, register_decoder

EMBED = 32  # open_clip tiny embed_dim == unCLIP image embedding size


def tiny_unclip_pipeline(tmp_path):
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableUnCLIPImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for i, ch in enumerate("abcdefghijklmnopqrstuvwxyz"):
        vocab[ch] = 2 + 2 * i
        vocab[ch + "</w>"] = 3 + 2 * i
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"),
                              model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=EMBED,
        projection_dim=EMBED, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=len(vocab) + 8))
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=EMBED, projection_dim=EMBED, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, intermediate_size=37, patch_size=8))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64),
        attention_head_dim=(2, 4), class_embed_type="projection",
        projection_class_embeddings_input_dim=EMBED * 2, cross_attention_dim=EMBED,
        layers_per_block=1, upcast_attention=True, use_linear_projection=True)
    vae = AutoencoderKL(block_out_channels=(32, 64), norm_num_groups=32,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                        latent_channels=4, sample_size=32)
    return StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=image_encoder,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=EMBED),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                beta_end=0.012, prediction_type="v_prediction",
                                set_alpha_to_one=False, steps_offset=1),
        vae=vae)


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("unclip")
    tiny_unclip_pipeline(root).save_pretrained(root / "model")
    return root / "model"


def test_local_folder_loads_through_from_pretrained_and_decodes(saved_pipeline):
    decoder = get_decoder("unclip", model=str(saved_pipeline), steps=2, batch_size=3,
                          device="cpu")
    emb = np.random.default_rng(0).normal(size=(4, EMBED)).astype(np.float32)
    images = decoder.decode(emb)
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    assert images.std() > 0  # not a blank canvas
    again = get_decoder("unclip", model=str(saved_pipeline), steps=2, batch_size=3,
                        device="cpu").decode(emb)
    np.testing.assert_array_equal(images, again)  # the sampler's seed is public and fixed


def test_missing_models_are_immediate_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(DecoderLoadError, match="does not exist"):
        UnclipDecoder(str(tmp_path / "no" / "model"), device="cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(DecoderLoadError, match="offline"):
        UnclipDecoder("stabilityai/stable-diffusion-2-1-unclip", cache_dir=str(tmp_path),
                      device="cpu")
    assert time.monotonic() - started < 30


def test_open_clip_to_unclip_end_to_end(saved_pipeline, tmp_path):
    """encode (tiny open_clip) -> DP fit -> synthesize -> decode (tiny unCLIP) -> PNGs,
    then the image-level evaluation re-encodes the decoded images."""
    cfg_file = tmp_path / "tiny-clip.json"
    cfg_file.write_text(json.dumps({
        "embed_dim": EMBED,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                       "head_width": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2,
                     "layers": 1}}))
    open_clip.add_model_config(cfg_file)
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny-clip").state_dict(), tmp_path / "clip.pt")
    config = load_config("configs/digits-quick.yaml", [
        f"encoder.name=open_clip:tiny-clip:{tmp_path / 'clip.pt'}", "encoder.options={}",
        f"encoder.cache_dir={tmp_path / 'cache'}", "model.normalize=null",
        "model.subspace_dim=8", "synthesize.n=200", "evaluate.steps=2",
        "decode.decoder=unclip", "decode.per_class=2", "evaluate.image_level_max=20",
        f"decode.options={{model: {saved_pipeline}, steps: 2, batch_size: 10, "
        "device: cpu}"])
    steps.plan(config, tmp_path / "plan.json")
    train = steps.encode(config, "train", progress=False)
    test = steps.encode(config, "test", progress=False)
    clusters = steps.dp_cluster(train.path, tmp_path / "plan.json", tmp_path / "c")
    mixture = steps.fit_gmm(train.path, clusters, tmp_path / "plan.json", tmp_path / "m")
    synthetic = steps.synthesize(mixture, tmp_path / "s", n=200)
    decoded = steps.decode(synthetic.path, tmp_path / "d", per_class=2,
                           decoder=config.decode.decoder, options=config.decode.options)
    images = np.load(decoded / "images.npy")
    assert images.shape == (20, 32, 32, 3)
    assert len((decoded / "index.csv").read_text().splitlines()) == 21
    assert (decoded / "grid.png").is_file()
    result = steps.evaluate_images(synthetic.path, test.path, config, max_images=20,
                                   progress=False)
    assert result["image_level_n"] == 20 and 0 <= result["image_level_accuracy"] <= 1


def test_a_ready_pipeline_object_can_be_registered_under_a_name(tmp_path):
    pipe = tiny_unclip_pipeline(tmp_path)
    register_decoder("unclip-test")(lambda **kw: UnclipDecoder(pipeline=pipe, device="cpu",
                                                               steps=1, **kw))
    try:
        out = get_decoder("unclip-test", height=16, width=16).decode(
            np.zeros((1, EMBED), np.float32))
        assert out.shape == (1, 16, 16, 3)
    finally:
        DECODERS.unregister("unclip-test")
