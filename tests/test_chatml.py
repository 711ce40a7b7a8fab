"""Qwen's chat format (ChatML) on the data side: a ChatML tokenizer built in code (no downloads) and
saved as a directory, read by the real loader; its end of turn (<|im_end|>) found by the rule the data
side already has; exact token masks against the character-level ground truth (tests/data_helpers.py)."""

import pytest
from data_helpers import check_ground_truth, pair, response
from test_masks import CASES, SEPARATORS

from maskdpo.data import encode_pair, load_tokenizer
from maskdpo.data.masks import end_of_turn

# Qwen2.5's template, shortened to what shapes the text (a default system message, then each turn as
# <|im_start|>role\n ... <|im_end|>\n).
QWEN25 = ("{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
          "{%- endif %}{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content']"
          " + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
# Qwen3's: no default system message; the last assistant turn gets an empty think block first, which
# the prompt rendered alone (add_generation_prompt) does not have.
QWEN3 = ("{%- for message in messages %}{%- if message['role'] == 'assistant' and loop.last %}"
         "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message['content'] + '<|im_end|>\\n' }}"
         "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
         "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
TEMPLATES = {"qwen2.5": QWEN25, "qwen3": QWEN3}


def chatml_tokenizer(path, template):
    """The bundled byte-level BPE with Qwen's special tokens and a ChatML template, saved to `path`
    and loaded back by maskdpo's loader. Its end of sequence is <|endoftext|> (a base Qwen model's),
    not the <|im_end|> the template ends turns with."""
    from transformers import AutoTokenizer

    from maskdpo.data.tokenizer import BUNDLED_TOKENIZER

    bundled = AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER))  # its own copy: load_tokenizer's is shared
    bundled.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<think>", "</think>"],
                                "eos_token": "<|endoftext|>"})
    bundled.chat_template = template
    bundled.save_pretrained(str(path))
    load_tokenizer.cache_clear()
    return load_tokenizer(path)


@pytest.fixture(scope="module", params=list(TEMPLATES))
def chatml(request, tmp_path_factory):
    return chatml_tokenizer(tmp_path_factory.mktemp(request.param), TEMPLATES[request.param])


def test_the_end_of_turn_is_im_end_not_the_end_of_sequence(chatml):
    im_end = chatml.convert_tokens_to_ids("<|im_end|>")
    assert im_end != chatml.convert_tokens_to_ids("<|endoftext|>") and im_end == chatml.convert_tokens_to_ids(
        chatml.tokenize("<|im_end|>")[0])
    assert end_of_turn(chatml) == im_end


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("eot", ["always", "last_sentence"])
def test_chatml_masks_meet_the_ground_truth(chatml, case, eot):
    chosen = response(CASES[case], SEPARATORS[case])
    rejected = response(list(reversed(CASES[case])), SEPARATORS[case])
    p = pair(chosen, rejected)
    encoded = encode_pair(p, chatml, eot=eot)
    for side in (encoded.chosen, encoded.rejected):  # the prompt (system, user, assistant header) weighs nothing
        assert not side.weights[:side.prompt_length].any()
    # eot "last_sentence": the weight this side gives its last sentence (kept if correct on the
    # chosen side, if hallucinated on the rejected one)
    last = {"chosen": chosen.sentences[-1].correct, "rejected": 1 - rejected.sentences[-1].correct}
    if eot == "always":
        last = {"chosen": 1.0, "rejected": 1.0}
    assert check_ground_truth(chatml, p, encoded, eot_weight=last, eot_token="<|im_end|>") > 0
    im_end = chatml.convert_tokens_to_ids("<|im_end|>")
    ids = encoded.chosen.input_ids.tolist()
    assert ids.count(im_end) >= 2 and encoded.chosen.weights[len(ids) - 1 - ids[::-1].index(im_end)] == last["chosen"]
    # the think block and the newline after <|im_end|> are template text: weight 0
    think = chatml.convert_tokens_to_ids("<think>")
    assert all(w == 0 for t, w in zip(ids, encoded.chosen.weights) if t == think)
    assert encoded.chosen.weights[-1] == 0.0 and ids[-1] != im_end


@pytest.mark.parametrize("template", ["bundled", *TEMPLATES])
def test_mask_none_weighs_every_response_token_as_plain_dpo_does(tmp_path, template):
    """data.mask none: every token after the prompt (as the template renders it for generation)
    through the first end-of-turn token weighs 1 on both sides, whatever the labels (a pair whose
    chosen side holds nothing correct is trained, not skipped); the prompt and what follows the end
    of turn weigh 0 (TRL's count). The reference is the rendered prompt's own token count."""
    import numpy as np

    tokenizer = load_tokenizer() if template == "bundled" else chatml_tokenizer(tmp_path, TEMPLATES[template])
    eot = end_of_turn(tokenizer)
    p = pair(response([("It opened in 1889.", "contradictory"), ("It is tall.", "unverifiable")]),
             response([("It opened in 1890.", "contradictory"), ("It is red.", "ok")]))
    encoded = encode_pair(p, tokenizer, mask="none")
    prompt = tokenizer.apply_chat_template(list(p.prompt), tokenize=False, add_generation_prompt=True)
    prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    for side in (encoded.chosen, encoded.rejected):
        ids = side.input_ids.tolist()
        end = ids.index(eot, prompt_tokens) + 1
        expected = np.zeros(len(ids), dtype=np.float32)
        expected[prompt_tokens:end] = 1.0
        assert side.weights[:side.prompt_length].sum() == side.prompt_length - prompt_tokens  # Qwen3's think block
        np.testing.assert_array_equal(side.weights, expected)
    with pytest.raises(ValueError, match="mask must be one of sentences, none"):
        encode_pair(p, tokenizer, mask="all")
