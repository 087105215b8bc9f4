"""Attribute binding by BLIP-VQA: per question p = P(yes) / (P(yes) + P(no)) from the first answer token,
image score = product over the prompt's questions (1 when it has none), images resized to 480x480 bicubic
(BLIP's VQA resolution; position embeddings interpolated when the checkpoint's config says 384).
As in the official code, each question's p is rounded to 4 decimals before the product (BLIP's `vqa_prob`
answers are '%.4f' strings) and the product is taken in float32 in question order (its reward tensor);
the image score is then stored as '%.4f' (eval.compbench.run.official_vqa).

The question goes to the text encoder as official BLIP gives it: tokenized to at most 35 tokens, its
first token [CLS] replaced by [ENC]. The transformers port keeps [CLS]; its checkpoints carry the [ENC]
embedding at the id after [DEC] (BLIP's tokenizer adds [DEC], then [ENC], to bert-base-uncased)."""
from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from eval import weights
from eval.compbench.questions import vqa_questions

log = logging.getLogger(__name__)

IMAGE_SIZE = 480
QUESTION_MAX_LENGTH = 35


def encoder_token_id(tokenizer, bos_token_id: int) -> int:
    """[ENC]'s id: the tokenizer's when it lists the token, else the id after [DEC]."""
    if "[ENC]" in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids("[ENC]")
    return bos_token_id + 1


class BlipVqa:
    def __init__(self, path: str = weights.BLIP_VQA, device: str = "cpu", image_size: int = IMAGE_SIZE):
        from transformers import BlipForQuestionAnswering, BlipProcessor

        folder = weights.hf_model_path(path, "BLIP-VQA model (--blip)")
        log.info("loading BLIP-VQA from %s", folder)
        self.processor = BlipProcessor.from_pretrained(folder)
        self.model = BlipForQuestionAnswering.from_pretrained(folder).eval().to(device)
        self.device, self.image_size, self.path = device, image_size, str(path)
        tokenizer = self.processor.tokenizer
        self.yes, self.no = (tokenizer(word, add_special_tokens=False).input_ids[0] for word in ("yes", "no"))
        self.bos = self.model.config.text_config.bos_token_id
        self.enc = encoder_token_id(tokenizer, self.bos)
        if self.enc >= self.model.config.text_config.vocab_size:
            raise ValueError(f"{path}: its text model has no [ENC] embedding (id {self.enc} >= vocabulary "
                             f"{self.model.config.text_config.vocab_size}); use a BLIP-VQA checkpoint")
        patch = self.model.config.vision_config.patch_size
        if image_size < patch:
            raise ValueError(f"--vqa-image-size {image_size} is smaller than one {patch}-pixel patch of {path}; "
                             f"use {IMAGE_SIZE}, BLIP's VQA resolution")
        processor = self.processor.image_processor
        self.mean = torch.tensor(processor.image_mean).view(3, 1, 1)
        self.std = torch.tensor(processor.image_std).view(3, 1, 1)

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        arrays = [np.asarray(im.convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32) / 255 for im in images]
        return (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) - self.mean) / self.std

    @torch.no_grad()
    def p_yes(self, images: list[Image.Image], questions: list[list[str]]) -> list[list[float]]:
        """P(yes) / (P(yes) + P(no)) for each question of each image."""
        pairs = [(i, q) for i, qs in enumerate(questions) for q in qs]
        if not pairs:
            return [[] for _ in images]
        interpolate = self.image_size != self.model.config.vision_config.image_size
        vision = self.model.vision_model(pixel_values=self.pixels(images).to(self.device),
                                         interpolate_pos_encoding=interpolate).last_hidden_state
        vision = vision[torch.tensor([i for i, _ in pairs], device=self.device)]
        text = self.processor.tokenizer([q for _, q in pairs], padding="longest", truncation=True,
                                        max_length=QUESTION_MAX_LENGTH, return_tensors="pt").to(self.device)
        input_ids = text.input_ids.clone()
        input_ids[:, 0] = self.enc
        encoded = self.model.text_encoder(input_ids=input_ids, attention_mask=text.attention_mask,
                                          encoder_hidden_states=vision,
                                          encoder_attention_mask=torch.ones(vision.shape[:2], dtype=torch.long,
                                                                            device=self.device))[0]
        start = torch.full((len(pairs), 1), self.bos, dtype=torch.long, device=self.device)
        logits = self.model.text_decoder(input_ids=start, encoder_hidden_states=encoded,
                                         encoder_attention_mask=text.attention_mask).logits[:, 0]
        probs = torch.softmax(logits.float(), dim=-1)
        p = (probs[:, self.yes] / (probs[:, self.yes] + probs[:, self.no])).tolist()
        out: list[list[float]] = [[] for _ in images]
        for (i, _), value in zip(pairs, p):
            out[i].append(value)
        return out

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        """Attribute-binding score per image: the product of its questions' p(yes), each rounded first."""
        return [official_product(ps) for ps in self.p_yes(images, [vqa_questions(p) for p in prompts])]

    def protocol(self) -> dict:
        return {"vqa_model": self.path, "vqa_image_size": self.image_size, "vqa_resize": "PIL bicubic, square",
                "vqa_score": "prod over noun-chunk questions of P(yes)/(P(yes)+P(no)) (first answer token), each "
                             "rounded to 4 decimals before the float32 product, as the official code",
                "vqa_question_tokens": f"[ENC] first (id {self.enc}), at most {QUESTION_MAX_LENGTH} tokens"}


def official_product(probabilities) -> float:
    """The official image score from its questions' P(yes): each rounded to 4 decimals ('%.4f', the answer
    string of BLIP's vqa_prob) and multiplied in float32, in question order (BLIP_vqa.py's reward tensor);
    1 for no question."""
    product = np.float32(1.0)
    for p in probabilities:
        product = np.float32(product * np.float32(float(f"{p:.4f}")))  # str -> float -> float32, as official
    return float(product)
