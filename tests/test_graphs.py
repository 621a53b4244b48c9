"""Attribution graphs (scope/graphs/): exact edges on tiny Gemma 2 and Gemma 3 models with random
transcoders, checked against hand computations and a brute-force Jacobian of an independently
written frozen replacement model; pruning against a matrix inverse; Neuronpedia's JSON schema;
interventions against the replacement model."""

import json
from pathlib import Path

import jsonschema
import pytest
import torch

import scope
from scope.graphs import Graph, attribution_graph, intervene
from tests.tiny import save_tiny_gemma2, save_tiny_gemma3

PROMPT = "Paris is the capital"
SCHEMA = json.loads((Path(__file__).parent / "neuronpedia_graph_schema.json").read_text())


def random_transcoders(model, d_sae=16, seed=0, skip=(), missing=()):
    """Random JumpReLU (skip-)transcoders in sae-lens' classes, float64, with thresholds inside the
    pre-activations' range so that about a third of the features fire."""
    from sae_lens import JumpReLUSkipTranscoder, JumpReLUTranscoder

    g = torch.Generator().manual_seed(seed)
    d, out = model.cfg.d_model, {}
    for layer in range(model.cfg.n_layers):
        if layer in missing:
            continue
        kind = JumpReLUSkipTranscoder if layer in skip else JumpReLUTranscoder
        transcoder = kind.from_dict(
            {
                "d_in": d,
                "d_sae": d_sae,
                "d_out": d,
                "dtype": "float64",
                "device": "cpu",
                "apply_b_dec_to_input": False,
                "metadata": {
                    "hook_name": f"blocks.{layer}.ln2.hook_normalized",
                    "hook_name_out": f"blocks.{layer}.hook_mlp_out",
                },
            }
        )
        with torch.no_grad():
            transcoder.W_enc.copy_(torch.randn(d, d_sae, generator=g, dtype=torch.float64) * 2 / d**0.5)
            transcoder.b_enc.copy_(torch.randn(d_sae, generator=g, dtype=torch.float64) * 0.1)
            transcoder.W_dec.copy_(torch.randn(d_sae, d, generator=g, dtype=torch.float64) * 0.3)
            transcoder.b_dec.copy_(torch.randn(d, generator=g, dtype=torch.float64) * 0.1)
            transcoder.threshold.copy_(torch.rand(d_sae, generator=g, dtype=torch.float64))
            if layer in skip:
                transcoder.W_skip.copy_(torch.randn(d, d, generator=g, dtype=torch.float64) * 0.05)
        out[layer] = transcoder
    return out


@pytest.fixture(scope="module", params=["gemma2", "gemma3"])
def case(request, tmp_path_factory):
    """(model, transcoders, graph): Gemma 2 (soft-capped logits) with one layer left without a
    transcoder; Gemma 3 (q/k norms, local/global layers) with two skip-transcoders."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "gemma2":
        model = scope.load_model("shieldgemma-2b", weights=save_tiny_gemma2(folder), device="cpu", dtype=torch.float64)
        transcoders = random_transcoders(model, missing=(2,))
    else:
        model = scope.load_model("gemma-3-270m", weights=save_tiny_gemma3(folder), device="cpu", dtype=torch.float64)
        transcoders = random_transcoders(model, skip=(1, 4))
    return model, transcoders, attribution_graph(model, transcoders, PROMPT, batch_size=32)


def _no_hooks(model) -> bool:
    return not any(point.fwd_hooks or point.bwd_hooks for point in model.hook_dict.values())


# ----------------------------------------------------------------------------- an independent frozen model


def _clean(model, transcoders):
    """The clean pass: frozen patterns and scales, embeddings, activations, errors (all by hand)."""
    tokens = model.to_tokens(PROMPT)
    _, cache = model.run_with_cache(tokens)
    acts, errors = {}, []
    for layer in range(model.cfg.n_layers):
        x, t = cache[f"blocks.{layer}.ln2.hook_normalized"][0], transcoders.get(layer)
        error = cache[f"blocks.{layer}.hook_mlp_out"][0]
        if t is not None:
            pre = x @ t.W_enc + t.b_enc
            acts[layer] = torch.relu(pre) * (pre > t.threshold)
            error = error - acts[layer] @ t.W_dec - (x @ t.W_skip.T if hasattr(t, "W_skip") else 0)
        errors.append(error.detach())
    return tokens, cache, {k: v.detach() for k, v in acts.items()}, torch.stack(errors)


def _frozen_forward(model, transcoders, tokens, cache, embed, acts, errors):
    """The replacement model as a function of its sources: patterns and norm scales replaced by
    their clean values, each MLP output replaced by ``acts @ W_dec + skip(x) + error``. Returns each
    layer's MLP input and the pre-cap logits at the last position."""
    seen = {}

    def frozen(act, hook):
        return cache[hook.name]

    def mlp_in(act, hook):
        seen[hook.layer()] = act[0]

    def mlp_out(act, hook):
        layer = hook.layer()
        t, x = transcoders.get(layer), seen[layer]
        if t is None:
            return errors[layer].unsqueeze(0)
        out = acts[layer] @ t.W_dec + errors[layer] + (x @ t.W_skip.T if hasattr(t, "W_skip") else 0)
        return out.unsqueeze(0)

    def logits(act, hook):
        seen["logits"] = act[0, -1]

    hooks = [
        (lambda n: n.endswith(("hook_pattern", "hook_scale")), frozen),
        ("hook_embed", lambda a, hook: embed.unsqueeze(0)),
        (lambda n: n.endswith("ln2.hook_normalized"), mlp_in),
        (lambda n: n.endswith("hook_mlp_out"), mlp_out),
        ("unembed.hook_out", logits),
    ]
    model.run_with_hooks(tokens, fwd_hooks=hooks)
    return seen


def test_the_replacement_forward_with_errors_reproduces_the_models_logits(case):
    model, transcoders, _ = case
    tokens, cache, acts, errors = _clean(model, transcoders)
    seen = _frozen_forward(model, transcoders, tokens, cache, cache["hook_embed"][0], acts, errors)
    assert torch.allclose(seen["logits"], cache["unembed.hook_out"][0, -1], rtol=0, atol=1e-10)
    cap = model.cfg.output_logits_soft_cap
    capped = cap * torch.tanh(seen["logits"] / cap) if cap > 0 else seen["logits"]
    assert torch.allclose(capped, model(tokens)[0, -1], rtol=0, atol=1e-10)


def test_incoming_edges_sum_to_each_nodes_input(case):
    model, transcoders, graph = case
    assert graph.completeness_error() < 1e-9
    tokens, cache, acts, _ = _clean(model, transcoders)
    nodes = graph.nodes
    features = nodes[nodes["kind"] == "feature"]
    assert len(features) == sum(int((a > 0).sum()) for a in acts.values())  # every active feature is a node
    for index, row in features.sample(20, random_state=0).iterrows():
        layer, pos, f = int(row["layer"]), int(row["position"]), int(row["feature"])
        expected = cache[f"blocks.{layer}.ln2.hook_normalized"][0, pos] @ transcoders[layer].W_enc[:, f]
        assert graph.adjacency[index].sum().item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-9)
    raw = cache["ln_final.hook_normalized"][0, -1] * model.ln_final.w @ model.W_U
    for index, row in nodes[nodes["kind"] == "logit"].iterrows():
        expected = raw[int(row["feature"])] - raw.mean()
        assert graph.adjacency[index].sum().item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-9)
    assert _no_hooks(model)


def _jacobians(model, transcoders, targets):
    """d(target)/d(sources) of the frozen model by brute force (``torch.autograd.functional``):
    returns the clean sources (embed, {layer: acts}, errors) and J w.r.t. each, one row per target."""
    tokens, cache, acts, errors = _clean(model, transcoders)
    embed = cache["hook_embed"][0].detach()
    layers = sorted(acts)

    def outputs(embed, stacked, errors):
        seen = _frozen_forward(model, transcoders, tokens, cache, embed, dict(zip(layers, stacked)), errors)
        logits = seen["logits"] - seen["logits"].mean()
        return torch.stack(
            [
                logits[t.feature]
                if t.kind == "logit"
                else seen[t.layer][t.position] @ transcoders[t.layer].W_enc[:, t.feature]
                for t in targets
            ]
        )

    stacked = torch.stack([acts[layer] for layer in layers])
    J_embed, J_acts, J_errors = torch.autograd.functional.jacobian(outputs, (embed, stacked, errors))
    return (embed, acts, errors), (J_embed, dict(zip(layers, J_acts.unbind(1))), J_errors)


def _expected_edge(i, source, sources, jacobians, zero_bos=False):
    """Target i's edge from ``source`` (a node row): the Jacobian times what the source writes."""
    (embed, _, errors), (J_embed, J_acts, J_errors) = sources, jacobians
    if source.kind == "feature":
        return J_acts[source.layer][i, source.position, source.feature] * source.activation
    if source.kind == "error":
        return (
            J_errors[i, source.layer, source.position]
            @ errors[source.layer, source.position]
            * (not (zero_bos and source.position == 0))
        )
    if source.kind == "embedding":
        return J_embed[i, source.position] @ embed[source.position]
    return torch.tensor(0.0, dtype=embed.dtype)


def _targets(graph):
    nodes = graph.nodes
    targets = nodes[nodes["kind"] == "feature"].sample(4, random_state=1)
    return [*targets.itertuples(), *nodes[nodes["kind"] == "logit"].head(2).itertuples()]


def _assert_close(row, expected, target):
    gap = (row.double() - expected.double()).abs() - 1e-8 * expected.double().abs()
    worst = int(gap.argmax())
    assert gap[worst] <= 1e-10, (target, worst, row[worst].item(), expected[worst].item())


def test_the_adjacency_equals_a_brute_force_jacobian_of_the_frozen_model(case):
    model, transcoders, graph = case
    targets = _targets(graph)
    sources, jacobians = _jacobians(model, transcoders, targets)
    for i, t in enumerate(targets):
        row = graph.adjacency[t.Index]
        expected = torch.stack([_expected_edge(i, n, sources, jacobians) for n in graph.nodes.itertuples()])
        _assert_close(row, expected, t)


@pytest.fixture(scope="module")
def zero_bos(case):
    model, transcoders, _ = case
    return attribution_graph(model, transcoders, PROMPT, batch_size=32, zero_bos=True)


def test_zero_bos_drops_the_bos_mlp_outputs_as_circuit_tracer_does_and_says_how_much(case, zero_bos):
    """circuit-tracer: no BOS feature nodes, BOS error nodes carry nothing, the BOS embedding node
    and every other edge unchanged; here checked against the brute-force Jacobian, and each
    target's ``bos_share`` against the Jacobian times the BOS MLP outputs."""
    model, transcoders, _ = case
    nodes = zero_bos.nodes
    features = nodes[nodes["kind"] == "feature"]
    _, _, acts, _ = _clean(model, transcoders)
    assert (features["position"] > 0).all()
    assert len(features) == sum(int((a[1:] > 0).sum()) for a in acts.values())
    targets = _targets(zero_bos)
    sources, jacobians = _jacobians(model, transcoders, targets)
    (_, acts, errors), (_, J_acts, J_errors) = sources, jacobians
    for i, t in enumerate(targets):
        row = zero_bos.adjacency[t.Index]
        expected = torch.stack([_expected_edge(i, n, sources, jacobians, zero_bos=True) for n in nodes.itertuples()])
        _assert_close(row, expected, t)
        share = J_errors[i, :, 0].mul(errors[:, 0]).sum() + sum(J_acts[layer][i, 0] @ acts[layer][0] for layer in acts)
        assert nodes.loc[t.Index, "bos_share"] == pytest.approx(share.item(), rel=1e-8, abs=1e-10)
        assert row.sum().item() + share.item() == pytest.approx(nodes.loc[t.Index, "input"], rel=1e-8, abs=1e-9)
    assert nodes.loc[nodes["kind"].isin(["feature", "logit"]), "bos_share"].abs().max() > 1e-3  # it matters
    assert zero_bos.completeness_error() < 1e-9 and zero_bos.metadata["settings"]["zero_bos"] is True
    assert _no_hooks(model)


# ----------------------------------------------------------------------------- pruning


def test_influence_matches_the_matrix_inverse_and_pruning_keeps_what_it_reports(case):
    _, _, graph = case
    A = graph.adjacency.double().abs()
    A = A / A.sum(1, keepdim=True).clamp(min=1e-10)
    nodes = graph.nodes
    weights = torch.tensor(nodes["probability"].fillna(0.0).to_numpy())
    expected = weights @ (torch.linalg.inv(torch.eye(len(A), dtype=A.dtype) - A) - torch.eye(len(A), dtype=A.dtype))
    assert torch.allclose(torch.tensor(nodes["influence"].to_numpy()), expected, atol=1e-12)
    assert nodes.loc[nodes["kind"].isin(["embedding", "logit"]), "kept"].all()
    report = graph.pruning_report()
    assert report["nodes"].sum() == len(nodes) and report["kept"].sum() == nodes["kept"].sum()
    assert report["influence"].sum() == pytest.approx(1.0)
    looser = graph.prune(node_threshold=0.95, edge_threshold=0.99)
    assert looser.nodes["kept"].sum() >= nodes["kept"].sum() and looser.influence_kept() >= graph.influence_kept()
    kept = set(nodes.loc[nodes["kept"], "node_id"])
    links = graph.links
    assert set(links["source"]) | set(links["target"]) <= kept
    assert (links["weight"].to_numpy() == graph.adjacency[links["target_index"], links["source_index"]].numpy()).all()


def test_partial_influence_from_rows_equals_the_square_matrix_inverse():
    """Ranking the features still to visit works from the rows computed so far, never the square
    matrix over every active feature (quadratic in the prompt); the sum is the same."""
    from scope.graphs.prune import partial_influence

    g = torch.Generator().manual_seed(0)
    n_sources, n_logits = 40, 3
    n_nodes = n_sources + n_logits
    # a DAG: node i reads only from nodes before it; logits read from every source
    square = torch.randn(n_nodes, n_nodes, generator=g, dtype=torch.float64).tril(-1)
    square[:, n_sources:] = 0
    visited = torch.tensor([3, 17, 8, 25, 30, 11])  # features with rows so far, in visiting order
    row_nodes = torch.cat([torch.arange(n_sources, n_nodes), visited])
    rows = square[row_nodes, :n_sources]
    square[[i for i in range(n_sources) if i not in visited.tolist()]] = 0  # unvisited: no rows yet
    weights = torch.zeros(n_nodes, dtype=torch.float64)
    weights[n_sources:] = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    A = square.abs() / square.abs().sum(1, keepdim=True).clamp(min=1e-10)
    eye = torch.eye(n_nodes, dtype=torch.float64)
    expected = weights @ (torch.linalg.inv(eye - A) - eye)
    found = partial_influence(rows, row_nodes, n_nodes, weights[n_sources:], torch.arange(n_sources, n_nodes))
    assert torch.allclose(found, expected, atol=1e-12)
    assert found[visited].min() > 0 and found[20] > 0  # through a visited node, and read by a logit


def test_max_feature_nodes_keeps_exact_edges_among_the_nodes_it_keeps(case):
    model, transcoders, full = case
    small = attribution_graph(model, transcoders, PROMPT, max_feature_nodes=12, batch_size=8)
    features = small.nodes[small.nodes["kind"] == "feature"]
    assert len(features) == 12 and small.completeness_error() > 1e-6  # the dropped features' share
    assert small.nodes["node_id"].is_unique and full.nodes["node_id"].is_unique
    index = {node: i for i, node in enumerate(full.nodes["node_id"])}
    mapped = torch.tensor([index[node] for node in small.nodes["node_id"]])
    assert torch.allclose(small.adjacency, full.adjacency[mapped][:, mapped], rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- files


def test_json_follows_neuronpedias_schema_and_save_load_round_trips(case, tmp_path):
    model, _, graph = case
    written = graph.to_json(tmp_path / "g.json", labels={(0, 1): "label of feature 1"})
    data = json.loads(written.read_text())
    jsonschema.validate(data, SCHEMA)
    kept = graph.nodes[graph.nodes["kept"]]
    assert {node["node_id"] for node in data["nodes"]} <= set(kept["node_id"])
    assert len(data["links"]) == len(graph.links)
    top = kept[kept["kind"] == "logit"].iloc[0]
    logit = next(node for node in data["nodes"] if node["node_id"] == top["node_id"])
    assert logit["is_target_logit"] and logit["layer"] == str(model.cfg.n_layers + 1)
    assert data["metadata"]["prompt_tokens"] == list(model.to_str_tokens(model.to_tokens(PROMPT)[0]))
    again = Graph.load(graph.save(tmp_path / "g.pt"))
    assert torch.equal(again.adjacency, graph.adjacency) and again.metadata == graph.metadata
    assert again.nodes.equals(graph.nodes)
    before_zero_bos = Graph(graph.nodes.drop(columns="bos_share"), graph.adjacency, graph.metadata)  # an older file
    assert before_zero_bos.nodes.equals(graph.nodes) and before_zero_bos.completeness_error() < 1e-9


# ----------------------------------------------------------------------------- interventions


def test_interventions_match_the_graph_where_the_graph_is_exact(case):
    model, transcoders, graph = case
    features = graph.nodes[graph.nodes["kind"] == "feature"].sort_values("influence", ascending=False)
    node, activation = features.iloc[0]["node_id"], features.iloc[0]["activation"]
    nudged = intervene(model, transcoders, graph, {node: activation * 0.999})  # too small to cross a threshold
    assert list(nudged["token_id"]) == list(graph.nodes.loc[graph.nodes["kind"] == "logit", "feature"])
    assert nudged["graph_direct"].abs().max() > 1e-6
    for predicted, measured in (("graph_direct", "replacement_direct"), ("graph", "replacement")):
        assert torch.allclose(torch.tensor(nudged[predicted]), torch.tensor(nudged[measured]), rtol=1e-6, atol=1e-12)
    assert _no_hooks(model)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_fails_before_any_hook_with_what_would_be_valid(case):
    model, transcoders, graph = case
    with pytest.raises(ValueError, match=r"batch_size"):
        attribution_graph(model, transcoders, PROMPT, batch_size=0)
    with pytest.raises(TypeError, match=r"zero_bos must be True or False, got 'yes'"):
        attribution_graph(model, transcoders, PROMPT, zero_bos="yes")
    with pytest.raises(ValueError, match=r"desired_logit_prob must be in \(0, 1\], got 1.5"):
        attribution_graph(model, transcoders, PROMPT, desired_logit_prob=1.5)
    with pytest.raises(ValueError, match=r"target 'Paris is' is \d+ tokens .*one token"):
        attribution_graph(model, transcoders, PROMPT, targets=["Paris is"])
    with pytest.raises(ValueError, match=r"layer\(s\) \[99\] are not layers of this model \(0-"):
        attribution_graph(model, {99: transcoders[0]}, PROMPT)
    with pytest.raises(ValueError, match=r"layer 1 reads blocks.0.ln2.hook_normalized .* needs blocks.1.ln2"):
        attribution_graph(model, {1: transcoders[0]}, PROMPT)
    with pytest.raises(ValueError, match=r"\['7_7_7'\] are not feature nodes .* look like \['"):
        intervene(model, transcoders, graph, {"7_7_7": 0.0})
    assert _no_hooks(model)


def test_targets_choose_the_logit_nodes(case):
    model, transcoders, _ = case
    graph = attribution_graph(model, transcoders, PROMPT, targets=[5, " is"][:1] + [7], max_feature_nodes=4)
    logits = graph.nodes[graph.nodes["kind"] == "logit"]
    assert list(logits["feature"]) == [5, 7]
    probs = torch.softmax(model(model.to_tokens(PROMPT))[0, -1], -1)
    assert logits["probability"].tolist() == pytest.approx([probs[5].item(), probs[7].item()])


def test_nodes_for_logit_rank_by_one_logits_influence(case):
    _, _, graph = case
    nodes = graph.nodes
    logits = nodes[nodes["kind"] == "logit"]
    logit = logits[~logits["token"].duplicated(keep=False)].iloc[-1]  # a string only it has
    A = graph.adjacency.double().abs()
    A = A / A.sum(1, keepdim=True).clamp(min=1e-10)
    weights = torch.zeros(len(A), dtype=A.dtype)
    weights[logit.name] = 1.0
    eye = torch.eye(len(A), dtype=A.dtype)
    expected = weights @ (torch.linalg.inv(eye - A) - eye)  # every path, summed by the matrix inverse
    ranked = graph.nodes_for_logit(int(logit["feature"]))
    assert logit["node_id"] not in set(ranked["node_id"]) and len(ranked) == len(nodes) - 1
    assert torch.allclose(torch.tensor(ranked["logit_influence"].to_numpy()), expected[ranked.index], atol=1e-12)
    assert ranked["logit_influence"].is_monotonic_decreasing and ranked["logit_influence"].iloc[0] > 0
    assert ranked.equals(graph.nodes_for_logit(logit["token"]))
    with pytest.raises(ValueError, match=r"'nope' is not a logit node of this graph; its logits are token ids \["):
        graph.nodes_for_logit("nope")
    shared = logits[logits["token"].duplicated(keep=False)]
    if len(shared):  # byte-level pieces decode alike
        with pytest.raises(ValueError, match=r"is the string of \d+ logit nodes \(token ids .*pass the id"):
            graph.nodes_for_logit(shared["token"].iloc[0])
