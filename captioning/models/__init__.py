"""Models: image encoders, recurrent cells, the caption decoder and the captioner."""
from captioning.models.captioner import Captioner, build_captioner, load_captioner
from captioning.models.attention import AttentionDecoder
from captioning.models.decoder import CaptionDecoder, DecoderConfig, build_decoder, caption_loss
from captioning.models.encoder import Encoder, build_encoder

__all__ = ["build_encoder", "Encoder", "DecoderConfig", "CaptionDecoder", "AttentionDecoder", "build_decoder",
           "caption_loss", "Captioner",
           "build_captioner", "load_captioner"]
