// OmniGen2 front-end extension: after a run, show on the sampler nodes (Cached Sampler, Repaint, Reflect: its last
// round) what the run did.
//
// The sampler node returns {"ui": {"omnigen2_stats": [stats]}}; ComfyUI hands that object to the node's
// onExecuted(message). We render it as a small table in a DOM widget: steps, reference tokens computed vs reused,
// tokens saved by compaction, tokens repainted (Repaint), time per step. No network requests, no globals beyond the registered extension.

import { app } from "../../scripts/app.js";

const SAMPLER_TYPES = new Set(["OmniGen2CachedSampler", "OmniGen2Repaint", "OmniGen2Reflect"]);
const STATS_KEY = "omnigen2_stats"; // keep in sync with nodes/bridge.py STATS_KEY
const WIDGET_NAME = "omnigen2_run_stats";
const ROW_HEIGHT = 18;

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
    const perStep = first(stats, "seconds_per_step", "time_per_step");
    if (perStep !== undefined) rows.push(["time per step", formatSeconds(perStep)]);
    const total = first(stats, "seconds", "total_seconds");
    if (total !== undefined) rows.push(["total time", formatSeconds(total)]);
    return rows;
}

function renderInto(element, rows) {
    element.replaceChildren();
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
            getMinHeight: () => Math.max(1, element.childElementCount) * ROW_HEIGHT + 8,
            getMaxHeight: () => Math.max(1, element.childElementCount) * ROW_HEIGHT + 8,
        });
    }
    return element;
}

export function showStats(node, stats) {
    const rows = formatStats(stats);
    node.omnigen2Stats = stats;
    renderInto(statsElement(node), rows);
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
