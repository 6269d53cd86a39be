"""`attrgate completion bash|zsh`: shell completion generated from the command-line parsers
themselves, so that a new option completes without anyone editing a script. Commands (and a
command's own subcommands), every option, the values of an option with choices, and file names,
also after `file://` and `fileb://` (the AWS CLI's way to read a value from a file)."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Command:
    name: str
    options: list[str] = field(default_factory=list)
    choices: dict[str, list[str]] = field(default_factory=dict)  # option -> its values
    subcommands: list[str] = field(default_factory=list)


def commands(parser: argparse.ArgumentParser, call: argparse.ArgumentParser) -> list[Command]:
    """Each command of `parser` (`call` from its own parser), with what completes after it."""
    found = []
    for name, sub in _subparsers(parser).items():
        found.append(_describe(name, call if name == "call" else sub))
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    # argparse has no public way to list a parser's options and subcommands; its _actions
    # are what its own help is made from.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _describe(name: str, parser: argparse.ArgumentParser) -> Command:
    command = Command(name, subcommands=sorted(_subparsers(parser)))
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or not action.option_strings:
            continue
        command.options += action.option_strings
        if action.choices:
            for option in action.option_strings:
                command.choices[option] = [str(c) for c in action.choices]
    return command


Case = Callable[[str, str, list[str]], str]  # (pattern, variable, words) -> one case line


def _cases(found: list[Command], case: Case, values_variable: str) -> tuple[str, str]:
    """The case lines setting `opts` for each command, and `values_variable` for each
    `command option` that takes one of a few values."""
    options = "\n".join(case(c.name, "opts", [*c.subcommands, *c.options]) for c in found)
    values = "\n".join(
        case(f"{c.name} {option}", values_variable, vals)
        for c in found
        for option, vals in c.choices.items()
    )
    return options, values


def bash(found: list[Command]) -> str:
    names = " ".join(c.name for c in found)
    options, values = _cases(
        found,
        lambda pattern, var, words: (
            f"        {shlex.quote(pattern)}) {var}={shlex.quote(' '.join(words))} ;;"
        ),
        "words",
    )
    return f"""# attrgate completion for bash: source <(attrgate completion bash)
_attrgate() {{
    # The word being completed, whole: bash splits words at ':' and '=' (file://...).
    local line="${{COMP_LINE:0:COMP_POINT}}"
    local -a typed
    read -r -a typed <<< "$line"
    local cur=""
    if [[ "$line" != *[[:space:]] && ${{#typed[@]}} -gt 1 ]]; then
        cur="${{typed[${{#typed[@]}}-1]}}"
        unset 'typed[${{#typed[@]}}-1]'
    fi
    local prev="${{typed[${{#typed[@]}}-1]}}"
    local command="${{typed[1]}}"
    local -a replies=()
    if [[ ${{#typed[@]}} -le 1 ]]; then
        mapfile -t replies < <(compgen -W "{names}" -- "$cur")
    elif [[ "$cur" == file://* || "$cur" == fileb://* ]]; then
        local scheme="${{cur%%://*}}://"
        local path
        while IFS= read -r path; do
            [[ -d "$path" ]] && path="$path/"
            replies+=("$scheme$path")
        done < <(compgen -f -- "${{cur#*://}}")
        compopt -o nospace 2>/dev/null
    else
        local words="" opts=""
        case "$command $prev" in
{values}
        esac
        if [[ -n "$words" ]]; then
            mapfile -t replies < <(compgen -W "$words" -- "$cur")
        else
            case "$command" in
{options}
            esac
            if [[ "$cur" == -* || ( -z "$cur" && -n "$opts" && "$opts" != -* ) ]]; then
                mapfile -t replies < <(compgen -W "$opts" -- "$cur")
            else
                mapfile -t replies < <(compgen -f -- "$cur")  # names with blanks stay whole
            fi
        fi
    fi
    # Replies replace bash's own word, which starts after the last ':' of ours.
    if [[ "$cur" == *:* && "$COMP_WORDBREAKS" == *:* ]]; then
        local colon="${{cur%"${{cur##*:}}"}}"
        local i
        for i in "${{!replies[@]}}"; do replies[$i]="${{replies[$i]#"$colon"}}"; done
    fi
    COMPREPLY=("${{replies[@]}}")
}}
complete -F _attrgate attrgate
"""


def zsh(found: list[Command]) -> str:
    names = " ".join(c.name for c in found)
    options, values = _cases(
        found,
        lambda pattern, var, words: (
            f"    ({shlex.quote(pattern)}) {var}=({' '.join(map(shlex.quote, words))}) ;;"
        ),
        "vals",
    )
    return f"""#compdef attrgate
# attrgate completion for zsh: attrgate completion zsh > "${{fpath[1]}}/_attrgate"
_attrgate() {{
  local cur=${{words[CURRENT]}} prev=${{words[CURRENT-1]}} command=${{words[2]}}
  local -a opts vals
  if (( CURRENT == 2 )); then
    compadd -- {names}
    return
  fi
  case $cur in
    (file://*|fileb://*)
      compset -P '*://'
      _files
      return ;;
  esac
  case "$command $prev" in
{values}
  esac
  if (( ${{#vals}} )); then
    compadd -- $vals
    return
  fi
  case $command in
{options}
  esac
  if [[ $cur == -* ]]; then
    compadd -- ${{(M)opts:#-*}}
  elif (( ${{#opts}} )) && [[ ${{opts[1]}} != -* ]] && [[ -z $cur ]]; then
    compadd -- $opts
  else
    _files
  fi
}}
_attrgate "$@"
"""


def script(shell: str, parser: argparse.ArgumentParser, call: argparse.ArgumentParser) -> str:
    found = commands(parser, call)
    return bash(found) if shell == "bash" else zsh(found)
