// Detections drawn over an image at the size the page shows it (small images scaled up), with
// labels that never cover each other. Used by the playground and the hard-frame thumbnails.
export const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"];

const overlaps = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;

// `width`: CSS pixels to draw at (the image is scaled to it); returns the boxes drawn.
export function drawDetections(canvas, image, detections, { width, font = 13, line = 2, labels = true } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const scale = width / image.naturalWidth;
  const cssHeight = Math.round(image.naturalHeight * scale);
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(cssHeight * ratio);
  canvas.style.aspectRatio = `${image.naturalWidth} / ${image.naturalHeight}`;
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.imageSmoothingEnabled = scale < 2; // small images scaled up stay sharp
  context.drawImage(image, 0, 0, width, cssHeight);
  context.lineWidth = line;
  context.font = `${font}px system-ui, sans-serif`;
  const placed = [];
  const height = font + 6;
  for (const d of detections) {
    const [x1, y1, x2, y2] = d.box.map((v) => v * scale);
    const colour = COLOURS[d.classId % COLOURS.length];
    context.strokeStyle = colour;
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
    if (!labels) continue;
    const text = `${d.className} ${d.score.toFixed(2)}`;
    const w = context.measureText(text).width + 8;
    const rect = { x: Math.min(Math.max(0, x1), Math.max(0, width - w)), y: y1 - height >= 0 ? y1 - height : y1, w, h: height };
    for (let tries = 0; tries < 40 && placed.some((p) => overlaps(p, rect)); tries++) rect.y += height;
    rect.y = Math.min(rect.y, cssHeight - height);
    placed.push(rect);
    context.fillStyle = colour;
    context.fillRect(rect.x, rect.y, rect.w, rect.h);
    context.fillStyle = "#fff";
    context.textBaseline = "middle";
    context.fillText(text, rect.x + 4, rect.y + height / 2);
  }
  return detections.length;
}

export function loadImage(source) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the image could not be read: use a JPEG, PNG or WebP file"));
    img.src = typeof source === "string" ? source : URL.createObjectURL(source);
  });
}
