// OmniGen2 front-end extension: after a run, show on the sampler nodes (Cached Sampler, Repaint, Chat, Reflect: its
// last round) what the run did, and on the Chat node the model's answer.
//
// The sampler node returns {"ui": {"omnigen2_stats": [stats]}}; ComfyUI hands that object to the node's
// onExecuted(message). We render it as a small table in a DOM widget: steps, reference tokens computed vs reused,
// tokens saved by compaction, tokens repainted (Repaint), guidance-pass steps skipped by a step cache (TeaCache,
// TaylorSeer), time per step. No network requests, no globals beyond the registered extension.

import { app } from "../../scripts/app.js";

const SAMPLER_TYPES = new Set(["OmniGen2CachedSampler", "OmniGen2Repaint", "OmniGen2Chat", "OmniGen2Reflect"]);
const STATS_KEY = "omnigen2_stats"; // keep in sync with nodes/bridge/outputs.py STATS_KEY
const WIDGET_NAME = "omnigen2_run_stats";
const ROW_HEIGHT = 18;
const ANSWER_CHARS_PER_ROW = 48; // about what a default-width node fits in 12px monospace
const ANSWER_MAX_ROWS = 8; // longer answers scroll

function first(stats, ...keys) {
    for (const key of keys) {
        if (stats[key] !== undefined && stats[key] !== null) return stats[key];
    }
    return undefined;
}

function formatCount(value) {
    return typeof value === "number" ? Math.round(value).toLocaleString("en-US") : String(value);
}

function formatSeconds(value) {
    if (typeof value !== "number") return String(value);
    return value >= 1 ? `${value.toFixed(2)} s` : `${(value * 1000).toFixed(0)} ms`;
}

// Turn a stats dict into [label, text] rows. Pure, so the browser test can check it without a node.
export function formatStats(stats) {
    if (!stats || typeof stats !== "object") return [];
    const rows = [];
    const steps = first(stats, "steps");
    if (steps !== undefined) rows.push(["steps", formatCount(steps)]);
    const computed = first(stats, "reference_tokens_computed", "ref_tokens_computed");
    const reused = first(stats, "reference_tokens_reused", "ref_tokens_reused");
    if (computed !== undefined || reused !== undefined) {
        const c = computed ?? 0;
        const r = reused ?? 0;
        const share = c + r > 0 ? ` (${Math.round((100 * r) / (c + r))}%)` : "";
        rows.push(["ref tokens computed", formatCount(c)]);
        rows.push(["ref tokens reused", `${formatCount(r)}${share}`]);
    }
    const saved = first(stats, "tokens_saved_by_compaction", "compaction_tokens_saved", "tokens_saved");
    if (saved !== undefined) rows.push(["saved by compaction", `${formatCount(saved)} tokens`]);
    const canvas = first(stats, "canvas_tokens");
    if (canvas !== undefined) rows.push(["repainted tokens", `${formatCount(first(stats, "noise_tokens") ?? 0)} of ${formatCount(canvas)}`]);
    const stepCache = first(stats, "step_cache");
    if (stepCache !== undefined) {
        const skipped = first(stats, "pass_steps_skipped") ?? 0;
        const all = skipped + (first(stats, "pass_steps_computed") ?? 0);
        const share = all > 0 ? ` (${Math.round((100 * skipped) / all)}%)` : "";
        rows.push([`skipped by ${stepCache}`, `${formatCount(skipped)} of ${formatCount(all)} pass steps${share}`]);
    }
    const perStep = first(stats, "seconds_per_step", "time_per_step");
    if (perStep !== undefined) rows.push(["time per step", formatSeconds(perStep)]);
    const total = first(stats, "seconds", "total_seconds");
    if (total !== undefined) rows.push(["total time", formatSeconds(total)]);
    return rows;
}

// How many rows the Chat node's answer takes (wrapped lines, at most ANSWER_MAX_ROWS); 0 when there is none.
export function answerRows(answer) {
    if (typeof answer !== "string") return 0;
    const lines = answer.split("\n").map((line) => Math.max(1, Math.ceil(line.length / ANSWER_CHARS_PER_ROW)));
    return Math.min(ANSWER_MAX_ROWS, lines.reduce((a, b) => a + b, 0));
}

function renderInto(element, rows, answer) {
    element.replaceChildren();
    const answerHeight = answerRows(answer);
    if (answerHeight) {
        const text = document.createElement("div");
        text.className = "omnigen2-answer";
        text.style.cssText = `white-space: pre-wrap; overflow-wrap: anywhere; overflow-y: auto; max-height: ${
            ANSWER_MAX_ROWS * ROW_HEIGHT}px; margin-bottom: 4px;`;
        text.textContent = answer;
        element.append(text);
    }
    element.dataset.rows = String(rows.length + answerHeight);
    for (const [label, text] of rows) {
        const row = document.createElement("div");
        row.className = "omnigen2-stats-row";
        row.dataset.stat = label;
        const name = document.createElement("span");
        name.className = "omnigen2-stats-label";
        name.textContent = `${label}: `;
        const value = document.createElement("span");
        value.className = "omnigen2-stats-value";
        value.textContent = text;
        row.append(name, value);
        element.append(row);
    }
}

function statsElement(node) {
    if (node.omnigen2StatsElement) return node.omnigen2StatsElement;
    const element = document.createElement("div");
    element.className = "omnigen2-stats";
    element.style.cssText =
        "font: 12px monospace; color: var(--input-text, #ddd); background: var(--comfy-input-bg, #222);" +
        "padding: 4px 6px; border-radius: 4px; overflow: hidden; white-space: nowrap;";
    node.omnigen2StatsElement = element;
    if (typeof node.addDOMWidget === "function") {
        node.addDOMWidget(WIDGET_NAME, "omnigen2-stats", element, {
            serialize: false,
            hideOnZoom: false,
            getMinHeight: () => Math.max(1, Number(element.dataset.rows) || 0) * ROW_HEIGHT + 8,
            getMaxHeight: () => Math.max(1, Number(element.dataset.rows) || 0) * ROW_HEIGHT + 8,
        });
    }
    return element;
}

export function showStats(node, stats) {
    const rows = formatStats(stats);
    node.omnigen2Stats = stats;
    renderInto(statsElement(node), rows, stats?.answer);
    if (typeof node.computeSize === "function" && typeof node.setSize === "function") {
        const [w, h] = node.computeSize();
        node.setSize([Math.max(node.size?.[0] ?? 0, w), Math.max(node.size?.[1] ?? 0, h)]);
    }
    node.setDirtyCanvas?.(true, true);
    return rows;
}

app.registerExtension({
    name: "OmniGen2.SamplerStats",
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (!SAMPLER_TYPES.has(nodeData?.name)) return;
        const onExecuted = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (message) {
            const result = onExecuted?.apply(this, arguments);
            const stats = message?.[STATS_KEY]?.[0];
            if (stats) showStats(this, stats);
            return result;
        };
    },
});
