// Defaults and limits for forms come from the API's OpenAPI document: the CRD's own numbers.
let cached = null;

export async function schemas() {
  if (!cached) cached = (await (await fetch("/api/openapi.json")).json()).components.schemas;
  return cached;
}

export function numberInput(h, property, value) {
  const attrs = { class: "form-control", type: "number", value: value ?? property.default ?? "" };
  if (property.minimum !== undefined) attrs.min = property.minimum;
  if (property.exclusiveMinimum !== undefined) attrs.min = property.exclusiveMinimum;
  if (property.maximum !== undefined) attrs.max = property.maximum;
  attrs.step = property.multipleOf ?? (Number.isInteger(property.default) ? 1 : "any");
  attrs.required = true;
  return h("input", attrs);
}

export function limits(property) {
  const low = property.minimum ?? property.exclusiveMinimum;
  const parts = [];
  if (low !== undefined) parts.push(`min ${low}`);
  if (property.maximum !== undefined) parts.push(`max ${property.maximum}`);
  if (property.multipleOf !== undefined) parts.push(`multiple of ${property.multipleOf}`);
  if (property.default !== undefined) parts.push(`default ${property.default}`);
  return parts.join(", ");
}
