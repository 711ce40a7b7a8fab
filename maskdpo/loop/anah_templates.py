"""`maskdpo annotate-templates`: ANAH-v2's own prompts as `maskdpo annotate --templates` files.

The ANAH-v2 annotator (opencompass/anah-v2) was trained on the prompts of its authors' file
eval/anah_v2/anahv2_prompt.py (github.com/open-compass/ANAH): three functions that return an
f-string prompt, Chinese when language == "zh", else English:
    fact_check_prompt(question, annotation, language)                  -> facts.txt
    reference_check_prompt(question, reference, annotation, language)  -> reference.txt
    hallucination_check_prompt(question, reference, annotation, language) -> judge.txt
Their text is not shipped here. This converts the user's copy at run time: the file is imported
(it is Python: it runs), each function is called with our placeholders as its arguments
({question}; {sentence} for the annotation; {reference}, the question's document, in the reference
prompt; {passages}, the reply of turn 2, in the hallucination prompt, which is what ANAH-v2 passes
it) for "en" and "zh", and what it returns is written byte for byte (whitespace and all: the model
saw those strings) as facts.txt, reference.txt, judge.txt and facts.zh.txt, reference.zh.txt,
judge.zh.txt, which maskdpo.loop.annotate uses for samples whose language is "zh".
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
from pathlib import Path

from .annotate import TEMPLATE_FILES, load_templates

# template stem -> (function, its positional arguments before `language`, as placeholders)
PROMPTS = {
    "facts": ("fact_check_prompt", ("{question}", "{sentence}")),
    "reference": ("reference_check_prompt", ("{question}", "{reference}", "{sentence}")),
    "judge": ("hallucination_check_prompt", ("{question}", "{passages}", "{sentence}")),
}
LANGUAGES = {"en": "", "zh": ".zh"}  # language passed -> file name infix (English: the plain files)
WHERE = "eval/anah_v2/anahv2_prompt.py of github.com/open-compass/ANAH"


def file_name(stem: str, language: str) -> str:
    return f"{stem}{LANGUAGES[language]}.txt"


def import_prompts(path: str | Path):
    """The module of the Python file at `path` (any file name), imported without touching sys.modules."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (want {WHERE})")
    name = "_maskdpo_anah_prompts_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    try:
        loader.exec_module(module)
    except Exception as e:  # the user's file: any error it raises is reported in one line
        raise ValueError(f"{path}: could not be imported ({type(e).__name__}: {e})") from None
    return module


def render(path: str | Path) -> dict[str, str]:
    """file name -> template text for the six templates, from the prompt functions of `path`."""
    module = import_prompts(path)
    texts = {}
    for stem, (function, arguments) in PROMPTS.items():
        prompt = getattr(module, function, None)
        if not callable(prompt):
            raise ValueError(f"{path}: no function {function}() (want {WHERE})")
        for language in LANGUAGES:
            call = f"{function}({', '.join(repr(a) for a in arguments)}, {language!r})"
            try:
                text = prompt(*arguments, language)
            except Exception as e:
                raise ValueError(f"{path}: {call} raised {type(e).__name__}: {e}") from None
            if not isinstance(text, str):
                raise ValueError(f"{path}: {call} returned {type(text).__name__}, not a str")
            missing = [a for a in arguments if a not in text]
            if missing:
                raise ValueError(f"{path}: {call} returned a prompt without {', '.join(missing)}: "
                                 f"its arguments are not ANAH-v2's (want {WHERE})")
            texts[file_name(stem, language)] = text
    return texts


def write_templates(texts: dict[str, str], directory: str | Path, force: bool = False) -> list[tuple[Path, str]]:
    """Write each text to directory/name (UTF-8, exactly). Refuses, before writing anything, when a
    file there holds other text, unless `force`. [(path, "wrote" | "overwrote" | "unchanged")]."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory}: not a directory")
    data = {name: text.encode("utf-8") for name, text in texts.items()}
    differ = [name for name, content in data.items()
              if (directory / name).exists() and (not (directory / name).is_file()
                                                   or (directory / name).read_bytes() != content)]
    if differ and not force:
        raise ValueError(f"{directory}: {', '.join(differ)} already there with other text: not overwritten "
                         "(--force to overwrite)")
    directory.mkdir(parents=True, exist_ok=True)
    done = []
    for name, content in data.items():
        target = directory / name
        if name not in differ and target.exists():
            done.append((target, "unchanged"))
            continue
        temporary = directory / f".{name}.tmp{os.getpid()}"
        temporary.write_bytes(content)
        os.replace(temporary, target)
        done.append((target, "overwrote" if name in differ else "wrote"))
    return done


def convert(prompts: str | Path, directory: str | Path, force: bool = False) -> list[str]:
    """Render and write the templates; the lines to print."""
    texts = render(prompts)
    done = write_templates(texts, directory, force)
    load_templates(directory)  # reads back as annotate will (variants complete, {passages} in judge only)
    lines = [f"{status} {path} ({len(texts[path.name])} characters)" for path, status in done]
    ours = set(texts)
    stems = {name[:-len(".txt")] for name in TEMPLATE_FILES}
    others = sorted(p.name for p in Path(directory).iterdir() if p.name not in ours and p.name.endswith(".txt")
                    and p.name.split(".")[0] in stems)
    if others:
        lines.append(f"note: {directory} also holds {', '.join(others)}: annotate reads those too")
    lines.append(f"annotate with: maskdpo annotate --templates {directory} ... (samples with \"language\": \"zh\" "
                 "get the .zh templates)")
    return lines
