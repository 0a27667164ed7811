// Firebase Auth sign-in (the JS SDK's compat build, vendored). Without Firebase configured the
// API runs in local mode (local admin on loopback) and the console needs no sign-in.
import { loadScript } from "./load.js";

let auth = null;
let localMode = false;

// Firebase's SDK is loaded only when sign-in is configured (local mode never downloads it).
export async function initAuth(config) {
  if (!config.firebase) {
    localMode = true;
    return;
  }
  await loadScript("firebase.js");
  const app = firebase.initializeApp({
    apiKey: config.firebase.apiKey,
    authDomain: config.firebase.authDomain,
    projectId: config.firebase.projectId,
  });
  auth = app.auth();
  if (config.firebase.emulatorUrl) auth.useEmulator(config.firebase.emulatorUrl, { disableWarnings: true });
  await new Promise((resolve) => {
    const stop = auth.onAuthStateChanged(() => {
      stop();
      resolve();
    });
  });
}

export const isLocalMode = () => localMode;
export const currentUser = () => (localMode ? { email: "local admin" } : auth && auth.currentUser);

export async function idToken() {
  if (localMode || !auth || !auth.currentUser) return null;
  return auth.currentUser.getIdToken();
}

export async function signIn(email, password) {
  await auth.signInWithEmailAndPassword(email, password);
}

export async function signOut() {
  if (auth) await auth.signOut();
}
