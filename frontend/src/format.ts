// Numbers as the page shows them: short, with units, and "–" when unknown.

export function ms(value: number | null | undefined): string {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (value >= 10_000) return `${(value / 1000).toFixed(1)} s`;
  if (value >= 100) return `${Math.round(value)} ms`;
  return `${value.toFixed(1)} ms`;
}

export function rate(value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

export function shortId(id: string): string {
  return id.length > 14 ? `${id.slice(0, 11)}…` : id;
}

// Bytes in decimal units, as `free -h` and the node's own log show them: "1.52 GB", "612 MB".
export function bytes(value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value) || value <= 0) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  let v = value;
  // 999.96 kB rounds to 1000 kB at three digits: it is 1.00 MB; 99.99 kB is 100 kB, not 100.0.
  while (v >= 999.5 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return `${v >= 99.95 || i === 0 ? v.toFixed(0) : v.toFixed(v >= 9.995 ? 1 : 2)} ${units[i]}`;
}

// A count in at most 4 characters or so: 950, 4.1k, 16k, 1.2M.
export function count(value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  if (value < 1000) return String(Math.round(value));
  if (value < 1_000_000) return `${(value / 1000).toFixed(value < 9_950 ? 1 : 0)}k`;
  return `${(value / 1_000_000).toFixed(value < 9_950_000 ? 1 : 0)}M`;
}

// A model as the page names it: the last part of a checkpoint path ("models/tiny-gpt2" -> "tiny-gpt2").
export function modelLabel(name: string): string {
  return name.split("/").filter(Boolean).pop() ?? name;
}
