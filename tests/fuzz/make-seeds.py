#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Writes the hand-made seed inputs of corpus/fuzz_safetensors and
# corpus/fuzz_config (inputs found by libFuzzer are added beside them).
import json, os, struct

here = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(here, 'corpus', target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def st(header, data=b'', pad=True):
    h = header if isinstance(header, bytes) else json.dumps(header, separators=(',', ':')).encode()
    if pad:
        h += b' ' * (-len(h) % 8)
    return struct.pack('<Q', len(h)) + h + data


def t(dtype, shape, b, e):
    return {'dtype': dtype, 'shape': shape, 'data_offsets': [b, e]}


S = 'fuzz_safetensors'
put(S, 'good-two', st({'__metadata__': {'format': 'pt'}, 'a.weight': t('F32', [2, 2], 0, 16),
                       'b.bias': t('BF16', [3], 16, 22)}, bytes(range(22))))
put(S, 'good-empty', st({}))
put(S, 'good-scalar-f16-zero', st({'s': t('F16', [], 0, 2), 'z': t('F32', [0, 7], 2, 2)}, b'\x00\x3c'))
put(S, 'good-unpadded', st({'x': t('F32', [1], 0, 4)}, b'\x00\x00\x80\x3f', pad=False))
put(S, 'bad-truncated', b'\x10\x00\x00\x00\x00')
put(S, 'bad-header-huge', struct.pack('<Q', 1 << 63) + b'{}')
put(S, 'bad-header-past-end', struct.pack('<Q', 64) + b'{"a":1}')
put(S, 'bad-overlap', st({'a': t('F32', [2], 0, 8), 'b': t('F32', [2], 4, 12)}, bytes(12)))
put(S, 'bad-dtype', st({'a': t('I64', [1], 0, 8)}, bytes(8)))
put(S, 'bad-lying', st({'model.norm.weight': t('F32', [64], 0, 128)}, bytes(256)))
put(S, 'bad-utf8', st(b'{"a\xff":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4)))
put(S, 'bad-dup', st(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                     b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', bytes(8)))
put(S, 'bad-shape', st(b'{"a":{"dtype":"F32","shape":[4294967296,4294967296,2.5,-1],'
                       b'"data_offsets":[0,4]}}', bytes(4)))
put(S, 'bad-escape-nul', st(b'{"a\\u0000":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4)))

C = 'fuzz_config'
llama31 = {
    'architectures': ['LlamaForCausalLM'], 'attention_bias': False, 'bos_token_id': 128000,
    'eos_token_id': [128001, 128008, 128009], 'hidden_size': 4096, 'intermediate_size': 14336,
    'max_position_embeddings': 131072, 'mlp_bias': False, 'model_type': 'llama',
    'num_attention_heads': 32, 'num_hidden_layers': 32, 'num_key_value_heads': 8,
    'rms_norm_eps': 1e-05, 'rope_scaling': {'factor': 8.0, 'low_freq_factor': 1.0,
                                            'high_freq_factor': 4.0,
                                            'original_max_position_embeddings': 8192,
                                            'rope_type': 'llama3'},
    'rope_theta': 500000.0, 'tie_word_embeddings': False, 'torch_dtype': 'bfloat16',
    'vocab_size': 128256}
put(C, 'good-llama31.json', json.dumps(llama31, indent=2))
put(C, 'good-mistral.json', json.dumps({
    'architectures': ['MistralForCausalLM'], 'bos_token_id': 1, 'eos_token_id': 2,
    'hidden_size': 4096, 'intermediate_size': 14336, 'max_position_embeddings': 32768,
    'num_attention_heads': 32, 'num_hidden_layers': 32, 'num_key_value_heads': 8,
    'rms_norm_eps': 1e-05, 'rope_theta': 10000.0, 'sliding_window': 4096,
    'torch_dtype': 'bfloat16', 'vocab_size': 32000}))
put(C, 'good-qwen2.json', json.dumps({
    'architectures': ['Qwen2ForCausalLM'], 'hidden_size': 896, 'intermediate_size': 4864,
    'max_position_embeddings': 32768, 'num_attention_heads': 14, 'num_hidden_layers': 24,
    'num_key_value_heads': 2, 'rms_norm_eps': 1e-06, 'rope_theta': 1000000.0,
    'sliding_window': 32768, 'use_sliding_window': False, 'tie_word_embeddings': True,
    'dtype': 'bfloat16', 'vocab_size': 151936, 'head_dim': None}))
put(C, 'good-tiny-modeltype.json', json.dumps({
    'model_type': 'llama', 'vocab_size': 64, 'hidden_size': 32, 'intermediate_size': 48,
    'num_hidden_layers': 2, 'num_attention_heads': 4,
    'rope_parameters': {'rope_type': 'default', 'rope_theta': 250000.0}}))
bad = dict(llama31, rope_scaling={'rope_type': 'yarn', 'factor': 4.0})
put(C, 'bad-yarn.json', json.dumps(bad))
put(C, 'bad-heads.json', json.dumps(dict(llama31, num_key_value_heads=6)))
put(C, 'bad-types.json', json.dumps(dict(llama31, hidden_size='4096', rope_theta=[1])))
put(C, 'bad-not-json', '{"architectures": ["LlamaForCausalLM"], ')
put(C, 'bad-arch.json', '{"architectures": ["GPT2LMHeadModel"]}')

# Real transformers output from tests/fixtures (see its README), when present:
# the config files as they are, and safetensors headers with the data cut.
fx = os.path.join(here, '..', 'fixtures', 'models')
for name in ('llama3-scaled', 'mistral-tiny', 'qwen2-tiny'):
    d = os.path.join(fx, name)
    if not os.path.isdir(d):
        continue
    with open(os.path.join(d, 'config.json'), 'rb') as f:
        put(C, 'fixture-%s.json' % name, f.read())
    st_name = 'model.safetensors' if name != 'mistral-tiny' else 'model-00003-of-00003.safetensors'
    with open(os.path.join(d, st_name), 'rb') as f:
        raw = f.read()
    n = struct.unpack('<Q', raw[:8])[0]
    put(S, 'fixture-%s-cut' % name, raw[:8 + n + 64])
