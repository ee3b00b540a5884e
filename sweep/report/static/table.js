(function(){
var t=document.getElementById('trials');if(!t)return;var tb=t.tBodies[0];
var rows=Array.prototype.slice.call(tb.rows),texts=null;
var f=document.getElementById('filter'),shown=document.getElementById('shown');
function key(r,i,num){var c=r.cells[i];var v=c.hasAttribute('data-v')?c.getAttribute('data-v'):c.textContent;
 if(v==='')return null;return num?parseFloat(v):v.toLowerCase();}
Array.prototype.forEach.call(t.tHead.rows[0].cells,function(th,i){th.addEventListener('click',function(){
 var dir=th.getAttribute('aria-sort')==='ascending'?-1:1,num=th.getAttribute('data-type')==='num';
 Array.prototype.forEach.call(t.tHead.rows[0].cells,function(h){h.removeAttribute('aria-sort');});
 th.setAttribute('aria-sort',dir===1?'ascending':'descending');
 var keyed=rows.map(function(r,j){return [key(r,i,num),j,r];});
 keyed.sort(function(a,b){if(a[0]===null)return b[0]===null?a[1]-b[1]:1;if(b[0]===null)return -1;
  if(a[0]<b[0])return -dir;if(a[0]>b[0])return dir;return a[1]-b[1];});
 rows=keyed.map(function(k){return k[2];});var frag=document.createDocumentFragment();
 rows.forEach(function(r){frag.appendChild(r);});tb.appendChild(frag);});});
function filter(){var terms=f.value.toLowerCase().split(/\s+/).filter(Boolean),n=0;
 if(!texts){texts=new Map();rows.forEach(function(r){texts.set(r,r.textContent.toLowerCase());});}
 rows.forEach(function(r){var s=texts.get(r),ok=terms.every(function(w){return s.indexOf(w)>=0;});
  r.hidden=!ok;if(ok)n++;});shown.textContent=n;}
if(f){f.addEventListener('input',filter);}
})();
