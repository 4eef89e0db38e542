"""One output name per input: no two inputs of a run write the same file, whatever their kind.

Inputs claim the files their records will write (writer.output_files) as they are read. Names are
compared as a case-insensitive, normalising file system would (names.name_key), file against file
and file against folder, so ``a.png`` and ``A.PNG``, ``q.jsonl``'s line 1 and ``q/line-00001.txt``,
or ``a.png``'s bare heatmap and ``a.bare.png``'s never meet. A later input whose name is taken gets
its own with ``~`` and a hash of its path (a warning in its record says so), or, where a file holds
the name of a folder it needs, that name flattened (``/`` as ``%2F``) as well: nothing is lost.
"""
from __future__ import annotations

import hashlib

from igcli.config import OutputSection
from igcli.names import NAME_BYTES, name_key, shorten
from igcli.results.records import Sample, TextSample, output_stem
from igcli.results.writer import output_files


class OutputNames:
    """The output files claimed so far in a run, by the input that claimed them.

    Top-k records add ``.topN`` to a name, the same N for every input, so two inputs' top-k
    files meet only where their names do: rank 1 stands for every rank.
    """

    def __init__(self, options: OutputSection, ranked: bool, regions: bool = False):
        self.options, self.ranked, self.regions = options, ranked, regions
        self._files: dict[str, str] = {}  # name_key of a file -> the input that claimed it
        self._folders: dict[str, str] = {}  # name_key of a folder -> an input below it

    def claim(self, sample: Sample | TextSample) -> None:
        """Claim ``sample``'s outputs, renaming it (``relpath``) first where they are taken."""
        stem = output_stem(sample.relpath)
        name, attempt, holder = stem, 0, self._holder(self._keys(stem, sample))
        first_holder = holder
        while holder is not None:
            attempt += 1
            # Past the first try the folders go too: a file may hold the name a folder needs.
            base = stem if attempt == 1 else stem.replace("/", "%2F")
            name = variant(base, f"{sample.source}\0{attempt}")
            if len(stem) == len(sample.relpath):  # no extension: a dot in the new name would make one
                head, slash, last = name.rpartition("/")
                name = head + slash + last.replace(".", "%2E")
            holder = self._holder(self._keys(name, sample))
        files, folders = self._keys(name, sample)
        for key in files:
            self._files[key] = sample.source
        for key in folders:
            self._folders.setdefault(key, sample.source)
        if name != stem:
            sample.relpath = name + sample.relpath[len(stem):]
            sample.warnings.append(f"output name '{stem}' is taken by {first_holder}; written as '{name}'")

    def _keys(self, name: str, sample: Sample | TextSample) -> tuple[list[str], set[str]]:
        ranked = f"{name}.top1" if self.ranked else name
        files = [name_key(file) for file in output_files(ranked, isinstance(sample, TextSample), self.options,
                                                       self.regions)]
        folders = {file.rsplit("/", depth)[0] for file in files for depth in range(1, file.count("/") + 1)}
        return files, folders

    def _holder(self, keys: tuple[list[str], set[str]]) -> str | None:
        files, folders = keys
        for key in files:
            holder = self._files.get(key) or self._folders.get(key)
            if holder is not None:
                return holder
        for key in folders:
            if key in self._files:
                return self._files[key]
        return None


def variant(stem: str, salt: str) -> str:
    """``stem`` with ``~`` and 8 hex digits of ``salt`` added to its last part, within NAME_BYTES."""
    head, slash, last = stem.rpartition("/")
    tag = hashlib.blake2b(salt.encode("utf-8", "surrogateescape"), digest_size=4).hexdigest()
    return f"{head}{slash}{shorten(f'{last}~{tag}', NAME_BYTES)}"
