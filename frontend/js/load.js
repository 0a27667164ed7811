// Browser libraries the console needs only on some pages (or only with sign-in), loaded on demand
// from their content-hashed names (the API inlines the vendor manifest into index.html).
const loading = new Map();

function vendor() {
  const inline = document.getElementById("console-config");
  try {
    return (inline && JSON.parse(inline.textContent || "{}").vendor) || {};
  } catch {
    return {};
  }
}

export function vendorUrl(name) {
  return vendor()[name] || `vendor/${name}`;
}

const GLOBALS = { "firebase.js": "firebase", "chart.js": "Chart", "bootstrap.js": "bootstrap" };

export function loadScript(name) {
  if (window[GLOBALS[name]]) return Promise.resolve();
  if (!loading.has(name)) {
    loading.set(name, new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = vendorUrl(name);
      script.onload = resolve;
      script.onerror = () => {
        loading.delete(name);
        reject(new Error(`cannot load ${name}: check the network and reload the page`));
      };
      document.head.append(script);
    }));
  }
  return loading.get(name);
}

// Chart.js (200 KB) only where a page draws charts.
export async function charts() {
  if (!window.Chart) await loadScript("chart.js");
  return window.Chart;
}
