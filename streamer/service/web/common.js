"use strict";
// Shared by the pages: the status poll, and a source's counts as the status line writes them.

// Calls show(status) with /api/status (at `url`) now and every second after, whatever fails in between.
function pollStatus(url, show) {
  const refresh = async () => {
    try {
      show(await (await fetch(url, {cache: "no-store"})).json());
    } catch (error) {
      console.warn("status:", error);
    }
    setTimeout(refresh, 1000);
  };
  refresh();
}

function countsText(counts) {
  if (!counts) return "not counting";
  const objects = Object.entries(counts.objects_total).map(([name, n]) => `${name} ${n} (${counts.visible[name] || 0} now)`);
  const lines = Object.entries(counts.lines).map(([name, per]) => {
    const sum = way => Object.values(per).reduce((total, c) => total + c[way], 0);
    return `${name} in ${sum("in")} out ${sum("out")}`;
  });
  const zones = Object.entries(counts.zones).map(([name, per]) => `${name} ${Object.values(per).reduce((a, b) => a + b, 0)}`);
  return [objects.join(", ") || "no objects yet", ...lines, ...zones].join("; ");
}
