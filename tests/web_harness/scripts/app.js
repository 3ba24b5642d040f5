// Stand-in for ComfyUI's /scripts/app.js in the browser test: records registered extensions, nothing else.
export const app = {
    extensions: [],
    registerExtension(extension) {
        this.extensions.push(extension);
    },
};
window.comfyApp = app;
