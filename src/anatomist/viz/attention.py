"""`attention_patterns`: an interactive viewer for attention heads, heads side by side.

One heatmap per selected head (rows: the query/destination token, columns: the key/source token
it reads), a checkbox per head to pick which are shown, and the token strip. Hovering a token
(or a cell) highlights, in every shown head, the row of what that token attends to and the column
of what attends to it; the strip is coloured by the first shown head's attention from (or to)
the hovered token. The selected heads are drawn in the HTML itself (they show even where a
notebook front end runs no script); the others are drawn by the inline script when picked, from
the figure's own JSON data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from anatomist.viz.figure import (
    SEQUENTIAL,
    HTMLFigure,
    check_labels,
    color,
    escape,
    figure_div,
    json_for_script,
    new_id,
    show_token,
    to_array,
)

CHAR_PX = 6.7
_LABEL_CHARS = 12  # axis labels are cut to this many characters
_SCRIPT = """
(function(){
var root=document.getElementById(%(fid)s);if(!root)return;
var data=JSON.parse(root.querySelector('script.anat-data').textContent);
var NS='http://www.w3.org/2000/svg',g=data.geom,n=data.tokens.length,mode='to';
var tpl=root.querySelector('template.anat-skeleton');
var toks=root.querySelectorAll('.anat-tok'),info=root.querySelector('.anat-info');
function rgb(v){var s=data.scale;v=Math.max(0,Math.min(1,v));for(var i=1;i<s.length;i++){
 if(v<=s[i][0]){var f=(v-s[i-1][0])/(s[i][0]-s[i-1][0]),c=[1,2,3].map(function(k){
 return Math.round(s[i-1][k]+(s[i][k]-s[i-1][k])*f)});return 'rgb('+c.join(',')+')'}}
 return 'rgb(8,48,107)'}
function panel(h){return root.querySelector('.anat-panel[data-h="'+h+'"]')}
function build(h){var svg=tpl.content.firstElementChild.cloneNode(true),
 cells=svg.querySelector('g.anat-cells'),p=data.patterns[h];
 for(var q=0;q<n;q++)for(var k=0;k<n;k++){var v=p[q][k];if(v===0)continue;
  var r=document.createElementNS(NS,'rect');r.setAttribute('class','anat-cell');
  r.setAttribute('data-q',q);r.setAttribute('data-k',k);
  r.setAttribute('x',(g.left+k*g.cell).toFixed(1));r.setAttribute('y',(g.top+q*g.cell).toFixed(1));
  r.setAttribute('width',g.cell);r.setAttribute('height',g.cell);r.setAttribute('fill',rgb(v));
  cells.appendChild(r)}
 panel(h).appendChild(svg)}
function shown(){var out=[];root.querySelectorAll('.anat-heads input').forEach(function(b){
 if(b.checked)out.push(+b.getAttribute('data-h'))});return out}
root.querySelectorAll('.anat-heads input').forEach(function(b){b.addEventListener('change',
 function(){var h=+b.getAttribute('data-h'),p=panel(h);
 if(b.checked){if(!p.querySelector('svg'))build(h);p.style.display=''}else p.style.display='none'})});
root.querySelectorAll('.anat-mode input').forEach(function(b){b.addEventListener('change',
 function(){mode=b.value})});
function clear(){root.classList.remove('anat-hovering');
 root.querySelectorAll('.anat-hl').forEach(function(e){e.classList.remove('anat-hl')});
 root.querySelectorAll('.anat-band').forEach(function(e){e.setAttribute('visibility','hidden')});
 toks.forEach(function(t){t.style.background='';t.style.color='';t.classList.remove('anat-hl-tok')});
 info.textContent=''}
function focus(q,k){clear();root.classList.add('anat-hovering');
 root.querySelectorAll('.anat-cell[data-q="'+q+'"],.anat-cell[data-k="'+k+'"]').forEach(
  function(e){e.classList.add('anat-hl')});
 root.querySelectorAll('.anat-band-row').forEach(function(e){
  e.setAttribute('y',(g.top+q*g.cell).toFixed(1));e.setAttribute('visibility','visible')});
 root.querySelectorAll('.anat-band-col').forEach(function(e){
  e.setAttribute('x',(g.left+k*g.cell).toFixed(1));e.setAttribute('visibility','visible')});
 toks[mode==='to'?q:k].classList.add('anat-hl-tok');
 var h=shown()[0];if(h===undefined)return;var p=data.patterns[h];
 toks.forEach(function(t,i){var v=mode==='to'?p[q][i]:p[i][k];t.style.background=rgb(v);
  t.style.color=v>0.6?'#fff':''});
 var what=mode==='to'?JSON.stringify(data.tokens[q])+' (pos '+q+') attends to':
  'attended to '+JSON.stringify(data.tokens[k])+' (pos '+k+') from';
 info.textContent=data.labels[h]+': '+what+' (colours below)'+(q!==k?'; cell '+q+' \\u2192 '+k+
  ': '+p[q][k].toFixed(3):'')}
toks.forEach(function(t,i){t.addEventListener('mouseenter',function(){focus(i,i)});
 t.addEventListener('mouseleave',clear)});
var panels=root.querySelector('.anat-panels');
panels.addEventListener('mouseover',function(e){var c=e.target;
 if(c.classList&&c.classList.contains('anat-cell'))focus(+c.getAttribute('data-q'),+c.getAttribute('data-k'))});
panels.addEventListener('mouseleave',clear);
})();
"""


def attention_patterns(
    tokens: Sequence[str],
    patterns: Any,
    head_labels: Sequence[Any] | None = None,
    *,
    title: str | None = None,
    selected: Sequence[int] | None = None,
) -> HTMLFigure:
    """An interactive view of attention patterns, one heatmap per head, side by side.

    `patterns` is ``[heads, q, k]`` or one head ``[q, k]`` (a tensor, array or nested list), e.g.
    ``cache["pattern", layer][0]``; `tokens` are the ``q == k`` token strings (e.g.
    ``model.to_str_tokens(text)``); `head_labels` name the heads (default ``"H0", "H1", ...``).
    `selected` lists the heads shown at first (default all); a checkbox per head shows or hides
    the others. Values are drawn on a white-to-blue scale from 0 to 1.
    """
    # Rounded once, for the drawn cells and the script's data alike: values under 5e-5 are blank.
    array = np.round(to_array(patterns, "patterns"), 4)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(
            f"patterns must be [heads, q, k] or [q, k], got shape {tuple(array.shape)}."
        )
    heads, n_q, n_k = array.shape
    if n_q != n_k:
        raise ValueError(
            f"patterns must be square (q == k, the same tokens on both axes), got shape "
            f"{tuple(array.shape)}."
        )
    if len(tokens) != n_q:
        raise ValueError(
            f"patterns [heads, q, k] has shape {tuple(array.shape)} but tokens has "
            f"{len(tokens)} entries: len(tokens) must equal q = k = {n_q}."
        )
    names = check_labels(tokens, "tokens", n_q, "patterns' q axis")
    labels = check_labels(
        head_labels if head_labels is not None else [f"H{h}" for h in range(heads)],
        "head_labels", heads, "patterns' heads axis",
    )  # fmt: skip
    picked = list(range(heads)) if selected is None else [int(h) for h in selected]
    if any(not 0 <= h < heads for h in picked):
        raise ValueError(f"selected heads {picked} must lie in 0..{heads - 1}.")

    fid = new_id("attn")
    n = n_q
    cell = float(min(22, max(3, 420 // n)))
    short = [show_token(t)[:_LABEL_CHARS] for t in names]
    with_labels = cell >= 9
    left = 6 + CHAR_PX * max(len(s) for s in short) if with_labels else 2.0
    top = 2.0
    bottom = 8 + 0.75 * CHAR_PX * max(len(s) for s in short) if with_labels else 2.0
    grid = n * cell
    width, height = left + grid + 4, top + grid + bottom
    geom = {"cell": cell, "left": left, "top": top}

    def skeleton(cells: str) -> str:
        parts = [
            f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{height:.0f}'>"
            f"<rect x='{left:.1f}' y='{top:.1f}' width='{grid:.1f}' height='{grid:.1f}' "
            "fill='#fff' stroke='#ccc' stroke-width='.5'/>"
            f"<g class='anat-cells'>{cells}</g>"
            f"<rect class='anat-band anat-band-row' x='{left:.1f}' y='{top:.1f}' "
            f"width='{grid:.1f}' height='{cell}' visibility='hidden'/>"
            f"<rect class='anat-band anat-band-col' x='{left:.1f}' y='{top:.1f}' "
            f"width='{cell}' height='{grid:.1f}' visibility='hidden'/>"
        ]
        if with_labels:
            for i, s in enumerate(short):
                y = top + (i + 0.5) * cell + 4
                cx, cy = left + (i + 0.5) * cell + 3, top + grid + 8
                parts.append(
                    f"<text x='{left - 3:.1f}' y='{y:.1f}' text-anchor='end'>{escape(s)}</text>"
                    f"<text x='{cx:.1f}' y='{cy:.1f}' text-anchor='end' "
                    f"transform='rotate(-60 {cx:.1f} {cy:.1f})'>{escape(s)}</text>"
                )
        parts.append("</svg>")
        return "".join(parts)

    def cells(h: int) -> str:
        out = []
        for q in range(n):
            for k in range(n):
                v = float(array[h, q, k])
                if v == 0.0:  # masked (future) positions stay blank, as in the script
                    continue
                out.append(
                    f"<rect class='anat-cell' data-q='{q}' data-k='{k}' "
                    f"x='{left + k * cell:.1f}' y='{top + q * cell:.1f}' width='{cell}' "
                    f"height='{cell}' fill='{color(v, SEQUENTIAL)}'/>"
                )
        return "".join(out)

    boxes = "".join(
        f"<label><input type='checkbox' data-h='{h}'{' checked' if h in picked else ''}> "
        f"{escape(label)}</label>"
        for h, label in enumerate(labels)
    )
    mode = (
        f"<span class='anat-mode'>hover colours the tokens by: "
        f"<label><input type='radio' name='{fid}-mode' value='to' checked> where it attends to"
        f"</label><label><input type='radio' name='{fid}-mode' value='from'> what attends to it"
        "</label></span>"
    )
    strip = "".join(
        f"<span class='anat-tok' data-i='{i}' title='{i}: {escape(repr(t))}'>"
        f"{escape(show_token(t))}</span>"
        for i, t in enumerate(names)
    )
    panels = "".join(
        f"<div class='anat-panel' data-h='{h}'"
        + ("" if h in picked else " style='display:none'")
        + f"><div class='anat-head-name'>{escape(labels[h])}</div>"
        + (skeleton(cells(h)) if h in picked else "")
        + "</div>"
        for h in range(heads)
    )
    data = {
        "tokens": names,
        "labels": labels,
        "patterns": array.tolist(),
        "geom": geom,
        "scale": [[t, *rgb] for t, rgb in SEQUENTIAL],
    }
    inner = (
        f"<div class='anat-heads'>heads: {boxes}</div><div>{mode}</div>"
        f"<div class='anat-tokens'>{strip}</div><div class='anat-info'></div>"
        f"<div class='anat-panels'>{panels}</div>"
        f"<template class='anat-skeleton'>{skeleton('')}</template>"
        f"<script type='application/json' class='anat-data'>{json_for_script(data)}</script>"
        f"<script>{_SCRIPT % {'fid': json_for_script(fid)}}</script>"
    )
    name = title or "attention patterns"
    return HTMLFigure(figure_div(fid, title, inner, "anat-attn"), name, "attention_patterns")
