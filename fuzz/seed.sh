#!/bin/sh
# Seeds each target's corpus from the repository: the parser fixtures (two bytes in front, see
# src/lib.rs: a choice and a chunk seed), and the config files. Safe to re-run.
set -eu
cd "$(dirname "$0")"
fixtures=../tests/fixtures
seed() { # target choice-byte file...
    target=$1; choice=$2; shift 2
    mkdir -p "corpus/$target"
    for file in "$@"; do
        [ -f "$file" ] || continue
        name=$(echo "${file#"$fixtures"/}" | tr '/' '_')
        # chunk seed 0: the whole body in one piece; 7: pieces of 0 to 64 bytes.
        { printf "\\$(printf '%03o' "$choice")\\000"; cat "$file"; } >"corpus/$target/$name.whole"
        { printf "\\$(printf '%03o' "$choice")\\007"; cat "$file"; } >"corpus/$target/$name.split"
    done
}
# byte 0 picks the body kind from bit 0 (0: SSE or NDJSON, 1: JSON), the rest as each target says.
for f in "$fixtures"/openai/* "$fixtures"/azure/* "$fixtures"/deepseek/* "$fixtures"/groq/* \
         "$fixtures"/mistral/* "$fixtures"/openrouter/* "$fixtures"/vllm/* "$fixtures"/xai/*; do
    case "$f" in *.sse) seed parser_openai_chat 0 "$f" ;; *) seed parser_openai_chat 1 "$f" ;; esac
done
for f in "$fixtures"/openai_responses/*; do
    case "$f" in *.sse) seed parser_openai_responses 0 "$f" ;; *) seed parser_openai_responses 1 "$f" ;; esac
done
for f in "$fixtures"/anthropic/*; do
    case "$f" in *.sse) seed parser_anthropic 0 "$f" ;; *) seed parser_anthropic 1 "$f" ;; esac
done
for f in "$fixtures"/gemini/*; do
    case "$f" in *.sse) seed parser_gemini 2 "$f" ;; *) seed parser_gemini 3 "$f" ;; esac
done
for f in "$fixtures"/ollama/*; do
    case "$f" in *.ndjson) seed parser_ollama 0 "$f" ;; *) seed parser_ollama 1 "$f" ;; esac
done
seed sse_framing 6 "$fixtures"/*/*.sse
seed ndjson_lines 6 "$fixtures"/ollama/*.ndjson
mkdir -p corpus/config
cp ../deploy/meter/meter.toml corpus/config/deploy.toml
if command -v meter >/dev/null 2>&1; then meter init --path - >corpus/config/default.toml; fi
if [ -x ../target/debug/meter ]; then ../target/debug/meter init --path - >corpus/config/default.toml; fi
echo "seeded: $(ls corpus | tr '\n' ' ')"
